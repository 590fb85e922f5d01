"""ncsniffer: per-host traffic statistics, a Python successor of Net::Connection::Sniffer."""

__version__ = "0.1"

import os as _os  # noqa: E402

# numpy loads OpenBLAS, which starts a thread per core that spins waiting for work;
# nothing here multiplies matrices, and on two cores the spinning thread took ~5%
# of a replay's CPU from the process next to it (issue 16).  Before numpy's import.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ncsniffer.errors import NcSnifferError  # noqa: E402

__all__ = ["__version__", "NcSnifferError", "gather"]


def gather(config: dict, argv=None, name=None) -> int:
    """Run the sniffer from a user's script, like ``gather($config)`` in Perl.

    The verbs (start, stop, ...) come from ``argv`` (default ``sys.argv[1:]``);
    the instance name from the script's name unless ``name`` is given.
    """
    from ncsniffer.cli import main_with_config

    return main_with_config(config, argv=argv, name=name)
