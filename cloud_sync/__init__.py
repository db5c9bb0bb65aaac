"""Cloud sync: encode store rows (Arrow IPC + zstd), upload with retry, advance the watermark only on ack.

The reference receiver lives in :mod:`cloud_sync.receiver`. See ``docs/sync.md`` and ``docs/ingestion.md``.
This package has no import-time side effects.
"""
