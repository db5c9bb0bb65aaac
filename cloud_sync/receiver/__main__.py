"""``python -m cloud_sync.receiver [options]`` runs the receiver (same options as ``gateway receiver``);
``python -m cloud_sync.receiver token GATEWAY_ID [--token-file F]`` mints a token for a gateway."""

from __future__ import annotations

import sys

from cloud_sync.receiver.server import main, mint_main

if __name__ == "__main__":
    argv = sys.argv[1:]
    raise SystemExit(mint_main(argv[1:]) if argv[:1] == ["token"] else main(argv))
