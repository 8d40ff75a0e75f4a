"""The on-disk contract and its readers: localfs layout and names, checkpoint rules, this host,
the typed records, the small-file readers and the run index. Standard library only."""
