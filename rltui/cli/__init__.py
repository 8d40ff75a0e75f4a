"""The command line: `rltui` (the TUI) and `rltui --batch COMMAND`; one module per command."""
