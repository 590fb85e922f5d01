"""``python -m ncsniffer ...`` runs ``nc.sniffer`` (instance name nc.sniffer unless --name)."""

import sys

from ncsniffer.cli import Env, main

sys.exit(main(env=Env(program="nc.sniffer")))
