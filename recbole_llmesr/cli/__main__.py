"""``python -m recbole_llmesr.cli``: ``run_recbole``, for launchers that start a module rather than a console
script (``torchrun ... -m recbole_llmesr.cli --model=...``)."""
import sys

from recbole_llmesr.cli.run_recbole import main

if __name__ == "__main__":
    sys.exit(main())
