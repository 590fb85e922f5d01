"""``python -m ncsniffer ...`` runs ``nc.sniffer`` (instance name nc.sniffer unless --name)."""

from ncsniffer.cli import Env, leave, main

leave(main(env=Env(program="nc.sniffer")))
