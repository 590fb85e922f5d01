"""SPEC 6.5: the command line's usage errors, exit codes and the config verb."""

import ast
import io
import os
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from ncsniffer import cli, pidfile
from ncsniffer.errors import UsageError
from tests.conftest import write_config


def run(*argv, program="nc.sniffer"):
    env = cli.Env(stdout=io.StringIO(), stderr=io.StringIO(), program=program)
    code = cli.main(list(argv), env)
    return code, env.stdout.getvalue(), env.stderr.getvalue()


@pytest.mark.parametrize("argv,message", [
    ((), "missing command argument(s)"),
    (("-d",), "missing command argument(s)"),
    (("start", "stop"), "too many command arguments"),
    (("-d", "start", "dump"), "too many command arguments"),
    (("launch",), "unknown command argument 'launch'"),
])
def test_usage_errors(argv, message):
    code, out, err = run(*argv)
    assert code == 1
    assert err.splitlines()[0] == message
    for verb in cli.VERBS:
        assert verb in err


def test_help_and_version():
    assert run("--help")[0] == 0 and "start" in run("--help")[1]
    assert run("--version")[1].startswith("ncsniffer ")


def test_missing_config_file_is_a_config_error(workdir):
    code, out, err = run("-c", os.path.join(workdir, "none.conf"), "status")
    assert code == 1 and "cannot read" in err and "none.conf" in err


def test_piddir_checked_first(workdir):
    conf = write_config(workdir, piddir=os.path.join(workdir, "missing"), bpf="udp")
    code, out, err = run("-c", conf, "status")
    assert code == 1 and err.strip() == "pid directory not specified or not writable"


def test_config_errors_exit_1(workdir):
    conf = write_config(workdir, bpf="udp port 53")
    code, out, err = run("-c", conf, "start")
    assert code == 1 and err.strip() == "config: missing hostname in bpf string"


def test_config_verb_prints_effective_configuration(workdir):
    conf = write_config(workdir, bpf="host 127.0.0.1", port=10004)
    code, out, err = run("-c", conf, "config")
    assert code == 0
    eff = ast.literal_eval(out)
    assert eff["interface"] == "lo" and eff["port"] == 10004 and eff["allowed"] == ["127.0.0.1"]
    assert eff["snaplen"] == 38 and eff["promiscuous"] is False


def test_instance_name_from_program_and_option(workdir):
    conf = write_config(workdir, bpf="host 127.0.0.1")
    assert run("-c", conf, "status", program="/usr/sbin/nc.sniffer2.pl")[2].strip() == \
        "nc.sniffer2 not running"
    assert run("-c", conf, "--name", "edge", "status")[2].strip() == "edge not running"


def test_r_only_with_start_or_config(workdir):
    code, out, err = run("-r", "x.pcap", "stop")
    assert code == 1 and "-r works with 'start'" in err


def test_replay_of_missing_file_is_a_runtime_error(workdir):
    conf = write_config(workdir, bpf="host 192.0.2.1")
    code, out, err = run("-c", conf, "-r", os.path.join(workdir, "nope.pcap"), "start")
    assert code == 2 and "nope.pcap" in err


@pytest.mark.integration
def test_chkifrunning(workdir):
    from ncsniffer import watchdog
    pidf = os.path.join(workdir, "x.pid")
    alive = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_pid(pidf, alive.pid)          # as the daemon writes it (issue 11.16)
        assert watchdog.main([pidf]) == 0 and os.path.exists(pidf)
    finally:
        alive.kill()
        alive.wait()
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open(pidf, "w") as fh:
        fh.write(f"{dead.pid}\n")
    marker = os.path.join(workdir, "restarted")
    script = os.path.join(workdir, "restart.sh")
    with open(script, "w") as fh:
        fh.write(f"#!/bin/sh\necho \"$1\" > {marker}\n")
    os.chmod(script, 0o755)
    chk = os.path.join(os.path.dirname(sys.executable), "chkIFrunning")
    r = subprocess.run([chk, pidf, script, "again"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(pidf) and open(marker).read().strip() == "again"
    assert watchdog.main([]) == 1


@pytest.mark.integration
def test_rc_script_passes_arguments(workdir):
    from tests.conftest import NC_SNIFFER, ROOT
    conf = write_config(workdir, bpf="host 127.0.0.1")
    env = dict(os.environ, NC_SNIFFER=NC_SNIFFER, NC_SNIFFER_CONF=conf)
    r = subprocess.run([os.path.join(ROOT, "rc.nc.sniffer"), "status"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 3 and r.stderr.strip() == "nc.sniffer not running"
    r = subprocess.run([os.path.join(ROOT, "rc.nc.sniffer"), "bogus"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 1 and "unknown command argument 'bogus'" in r.stderr


def test_top_options_belong_to_top():
    args = cli.parse_args(["-c", "top", "--name", "x", "top", "--once", "-c", "y"])
    assert (args.config, args.name, args.verbs, args.top_args) == ("top", "x", ["top"],
                                                                    ["--once", "-c", "y"])
    assert cli.parse_args(["start", "-d"]).top_args == []


# Issue 16: what each short command leaves out of its process (the import graph,
# not a timing): argparse (with gettext's locale) and webconf (home of the
# ArgParser) are neither's, the usual command line being read without them; the
# settings' validation and the dataclasses (with inspect), a Perl
# config's parser are not status's; the pid file, the signal module, the user
# and group databases (no user or group set), ipaddress (a numeric bpf host) and
# the Perl parser (a stats file written, not read) are not an empty replay's.
NOT_SHORT = {"argparse", "locale", "ncsniffer.webconf"}
NOT_STATUS = NOT_SHORT | {"ncsniffer.config", "ncsniffer.perlval", "dataclasses", "inspect",
                          "signal"}
NOT_EMPTY_REPLAY = NOT_SHORT | {"ncsniffer.pidfile", "signal", "grp", "pwd", "ipaddress",
                                "ncsniffer.perlval"}


@pytest.mark.integration
def test_status_and_an_empty_replay_leave_out_what_they_do_not_use(tmp_path):
    from ncsniffer import pcapgen
    from tests.conftest import imported_modules
    d = str(tmp_path)
    conf = write_config(d, bpf="host 192.0.2.10")
    cap = str(tmp_path / "empty.pcap")
    pcapgen.write_pcap(cap, 1, [])
    status = imported_modules(["-c", conf, "status"], d)
    assert "ncsniffer.pidfile" in status and not status & NOT_STATUS
    replayed = imported_modules(["-q", "-c", conf, "-r", cap, "start"], d)
    assert "ncsniffer.dumpfile" in replayed and not replayed & NOT_EMPTY_REPLAY
    assert os.path.exists(os.path.join(d, "nc.sniffer.stats"))


# Words of command lines: every option, verbs, and what argparse alone reads
# (joined options, --opt=value, option-like values, unknown options, "--", "")
WORDS = [w for words, _, _ in cli.OPTIONS for w in words] + [
    "start", "status", "stop", "top", "bogus", "x.conf", "a b", "-dq", "-cfile",
    "--config=x", "--conf", "--nam", "-x", "-", "--", "", "-1", "x=y", "@file", "-c=x"]


@given(st.lists(st.sampled_from(WORDS), max_size=8))
def test_quick_args_read_what_argparse_reads_or_leave_it_to_argparse(argv):
    quick = cli._quick_args(argv)
    try:
        plain = vars(cli._parser().parse_args(argv))
    except UsageError:
        plain = None
    assert quick is None or vars(quick) == plain


@pytest.mark.parametrize("argv", [
    ["-q", "-c", "nc.conf", "-r", "empty.pcap", "start"], ["-c", "nc.conf", "status"],
    ["start", "-d", "--name", "nc.sniffer2"], ["--foreground", "-f", "restart"], ["-h"]])
def test_the_usual_command_lines_need_no_argparse(argv):
    quick = cli._quick_args(argv)
    assert quick is not None and vars(quick) == vars(cli._parser().parse_args(argv))
    assert vars(cli.parse_args(argv)) == vars(cli.parse_args(argv, quick=False))


LEAVE = """
import atexit, sys, threading, time
from ncsniffer.cli import leave
atexit.register(lambda: sys.stdout.write("atexit ran;"))
sys.stdout.write("buffered;")
sys.stderr.write("to stderr;")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.3), sys.stdout.write("thread done;"))).start()
leave(3)
sys.stdout.write("never")
"""


@pytest.mark.parametrize("case, out", [("alone", "buffered;atexit ran;"),
                                       ("thread", "buffered;thread done;atexit ran;")])
def test_leave_flushes_runs_atexit_and_waits_for_threads(case, out):
    """The program's exit: what is buffered is written and the atexit handlers run
    (without the interpreter's clean-up, which nothing of ours needs); a thread
    still running is waited for, as at any exit."""
    done = subprocess.run([sys.executable, "-c", LEAVE, case], capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (3, out, "to stderr;")


def test_leave_on_a_closed_stdout_is_the_usual_exit():
    """A reader gone from the pipe: Python's own message and exit code, as before."""
    said = []
    for ending in ("leave(0)", "sys.exit(0)"):
        code = f"import sys; from ncsniffer.cli import leave; sys.stdout.write('x'); {ending}"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.close()
        _, err = proc.communicate(timeout=30)
        said.append((proc.returncode, err))
    assert said[0] == said[1] and said[0][0] != 0 and b"BrokenPipeError" in said[0][1]
