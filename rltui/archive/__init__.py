"""S3 archive of training runs: backup, list, restore, verify and cleanup (boto3).

The parts, one idea each:
    flags      --action and the flags each action takes (check_flags)
    settings   ~/.lambda_s3.env + the environment -> S3Settings; the boto3 client; redaction
    manifest   what a backup holds (Manifest, FileEntry), which local files belong to a run,
               and the sha256 cache
    store      the remote side: keys, manifest get/put, listing, parallel transfers
    progress   the throttled bytes / rate / ETA line
    backup     backup, backup-all and --cleanup
    restore    restore into localfs, safely
    report     list-backups and verify

Nothing here imports boto3 at module level except `store` and `settings.make_client`, which do
it inside functions, so `rltui` starts without it. The flags and their rules are `flags`
(standard library only); the commands are rltui/sync_to_s3.py and `rltui --batch sync`
(rltui/cli/sync.py).
"""
