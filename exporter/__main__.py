"""`python -m exporter` and the `lektrico-exporter` command: exporter.cli's command line."""

import gc
import sys

# The young generation while the exporter's modules are imported. The imports make some 50,000
# objects that live as long as the process; at CPython's default (700) the collector walks them
# again and again while they are made, about 80 ms of CPU of a start-up of half a second.
IMPORT_THRESHOLD = 50_000


def main() -> int:
    defaults = gc.get_threshold()
    gc.set_threshold(IMPORT_THRESHOLD, *defaults[1:])
    try:
        from exporter.cli import main as cli_main
    finally:
        gc.set_threshold(*defaults)  # what runs starts as before (and run() tunes it, see cli)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
