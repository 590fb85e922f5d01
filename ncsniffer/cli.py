"""``nc.sniffer [-c CONFIG] [-r FILE] [-d|-f] start|stop|restart|status|dump|config``.

Exit codes: 0 ok, 1 usage or configuration error, 2 runtime failure,
3 for ``status`` when the daemon is not running (the LSB convention).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from types import SimpleNamespace
from typing import IO, TYPE_CHECKING, NoReturn

# config (the settings' validation, dataclasses), pidfile and signal are imported by
# the verbs that use them, argparse by an unusual command line: `status` validates
# nothing, an empty replay reads no pid file (issue 16: every start pays its imports)
from ncsniffer import __version__, configfile
from ncsniffer.errors import ConfigError, NcSnifferError, UsageError

if TYPE_CHECKING:
    import argparse

VERBS = ("start", "stop", "restart", "status", "dump", "config", "top", "events")
# (the option's words, what it sets, whether a value follows): argparse's parser and
# the quick one (_quick_args) are both made from this
OPTIONS = (
    (("-c", "--config"), "config", True),
    (("-r", "--read"), "read", True),
    (("-d", "--debug"), "debug", False),
    (("-f", "--foreground"), "foreground", False),
    (("-q", "--quiet"), "quiet", False),
    (("--name",), "name", True),
    (("-h", "--help"), "help", False),
    (("--version",), "version", False),
    (("--traceback",), "traceback", False),        # not in the usage text
)
VALUE_OPTIONS = tuple(word for words, _, value in OPTIONS if value for word in words)
_OPTION_WORDS = {word: (dest, value) for words, dest, value in OPTIONS for word in words}
STOP_WAIT = 15.0
EXIT_OK, EXIT_USAGE, EXIT_RUNTIME, EXIT_NOT_RUNNING = 0, 1, 2, 3

USAGE = """\
usage: {prog} [-c CONFIG] [-r FILE] [-d|-f] [-q] [--name NAME] COMMAND

commands:
  start     start the daemon unless it runs, write the pid file
            (with -r FILE: replay the capture file in the foreground)
  stop      stop the daemon: SIGTERM, SIGKILL after 15 s
  restart   stop, then start
  status    tell whether the daemon is running
  dump      have the daemon rewrite its stats file (SIGUSR1)
  config    print the effective configuration
  top       live view of the busiest peers (top --help: its options)
  events    print new and ended connections as JSON lines, live
            (needs connections: True)

options:
  -c FILE   configuration file (default /etc/nc.sniffer/NAME.conf); a Python
            dict literal, or an old nc.sniffer.pl script
  -r FILE   read packets from a pcap/pcapng file instead of an interface
  -d        stay in the foreground and write dumps to stderr
  -f, --foreground
            stay in the foreground, log to stderr, write the stats file as
            usual (for systemd: Type=notify, readiness and watchdog)
  -q        no progress lines while replaying a file
  --name N  instance name (default: the program name, e.g. nc.sniffer1)
  -h, --help  this text;  --version  the version
"""


class Env:
    """What the CLI touches of the outside world, so tests can drive it in-process."""

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 program: str | None = None):
        self.stdout = sys.stdout if stdout is None else stdout
        self.stderr = sys.stderr if stderr is None else stderr
        if program is None:
            program = sys.argv[0] if sys.argv else "nc.sniffer"
        self.program = program


def _parser() -> argparse.ArgumentParser:
    import argparse

    from ncsniffer.webconf import ArgParser, fixed_width
    p = ArgParser(add_help=False, allow_abbrev=False, error_class=UsageError,
                  formatter_class=fixed_width)
    for words, dest, value in OPTIONS:
        kwargs = {"dest": dest} if value else {"dest": dest, "action": "store_true"}
        if dest == "traceback":
            kwargs["help"] = argparse.SUPPRESS
        p.add_argument(*words, **kwargs)
    p.add_argument("verbs", nargs="*")
    return p


def _quick_args(argv: list[str]) -> SimpleNamespace | None:
    """What ``_parser`` makes of the usual command line, without argparse: its import
    and parser were the costliest part of ``status``'s and an empty replay's start
    (bench/results/startup-*.md).  Known options, each value its own word and no
    option-like value, the verbs together; None for anything else (argparse reads
    it, and words its errors)."""
    found: dict = {dest: None if value else False for _, dest, value in OPTIONS}
    verbs: list[str] = []
    after_verbs = False             # an option after the verbs: argparse takes no more
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _OPTION_WORDS:
            dest, value = _OPTION_WORDS[word]
            if value:
                i += 1
                if i == len(argv) or argv[i][:1] in ("", "-"):
                    return None
            found[dest] = argv[i] if value else True
            after_verbs = bool(verbs)
        elif word[:1] in ("", "-") or after_verbs:
            return None
        else:
            verbs.append(word)
        i += 1
    return SimpleNamespace(**found, verbs=verbs)


def _split_top(argv: list[str]) -> tuple[list[str], list[str]]:
    """``top`` has options of its own: the words after the verb are its (ncsniffer.top)."""
    i = 0
    while i < len(argv):
        if argv[i] == "top":
            return argv[:i + 1], argv[i + 1:]
        i += 2 if argv[i] in VALUE_OPTIONS else 1
    return argv, []


def parse_args(argv: list[str], quick: bool = True) -> argparse.Namespace | SimpleNamespace:
    """The command line's options and verb (``quick``: the usual ones without argparse)."""
    argv, top_args = _split_top(argv)
    args = _quick_args(argv) if quick else None
    if args is None:
        args = _parser().parse_args(argv)
    args.top_args = top_args
    if args.help or args.version:
        return args
    if not args.verbs:
        raise UsageError("missing command argument(s)")
    if len(args.verbs) > 1:
        raise UsageError("too many command arguments")
    if args.verbs[0] not in VERBS:
        raise UsageError(f"unknown command argument '{args.verbs[0]}'")
    if args.read and args.verbs[0] not in ("start", "config"):
        raise UsageError(f"-r works with 'start' (and 'config'), not '{args.verbs[0]}'")
    return args


def leave(code: int) -> NoReturn:
    """Exit with ``code``: the atexit handlers run, stdout and stderr flushed, then,
    with no other thread left, without the interpreter's clean-up: freeing every
    module and object is 11 ms of a replay that loaded numpy (issue 16), and
    nothing here needs it (every file is closed where it is written).  Otherwise,
    or where a flush fails, the usual exit (it waits for the threads, says what
    failed)."""
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)     # CPython's
    if run_exitfuncs is None or ("threading" in sys.modules
                                 and sys.modules["threading"].active_count() > 1):
        sys.exit(code)
    run_exitfuncs()                 # and forgets them: the usual exit does not run them again
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(code)
    os._exit(code)


def main(argv: list[str] | None = None, env: Env | None = None) -> int:
    """Entry point of ``nc.sniffer``."""
    return _run(argv, env, config=None)


def main_with_config(config: dict, argv=None, name: str | None = None, env: Env | None = None) -> int:
    """Entry point of ``ncsniffer.gather(config)``: the config comes from the caller."""
    if name is not None:
        argv = list(sys.argv[1:] if argv is None else argv) + ["--name", name]
    return _run(argv, env, config=config)


def _run(argv, env, config) -> int:
    env = env or Env()
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(env.program)
    debug = "--traceback" in argv
    try:
        args = parse_args(argv)
        if args.help:
            env.stdout.write(USAGE.format(prog=prog))
            return EXIT_OK
        if args.version:
            env.stdout.write(f"ncsniffer {__version__}\n")
            return EXIT_OK
        name = args.name or configfile.instance_name(env.program)
        return dispatch(args, name, config, env)
    except UsageError as exc:
        env.stderr.write(f"{exc}\n\n" + USAGE.format(prog=prog))
        return EXIT_USAGE
    except ConfigError as exc:
        env.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except NcSnifferError as exc:
        env.stderr.write(f"{prog}: {exc}\n")
        if debug:
            import traceback
            traceback.print_exc(file=env.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def dispatch(args, name: str, config: dict | None, env: Env) -> int:
    verb = args.verbs[0]
    if config is None and verb == "top" and {"-h", "--help"} & set(args.top_args):
        config = {}                    # top's help needs no configuration
    if config is None:
        path = args.config or f"/etc/nc.sniffer/{name}.conf"
        config = configfile.load_file(path)
    if verb == "top":
        from ncsniffer import top
        return top.run(args.top_args, config, name, env.stdout)
    if args.read:
        from ncsniffer import config as configmod
        settings = configmod.validate(config, name, offline=True, to_stderr=args.debug)
        if verb == "config":
            env.stdout.write(configmod.describe(settings))
            return EXIT_OK
        from ncsniffer import emptycapture       # no packets: no numpy, no pipeline
        done = emptycapture.replay(settings, args.read, env.stderr)
        if done is not None:
            return done
        from ncsniffer import headstart          # before numpy: it reads meanwhile
        early = headstart.start(settings, args.read)
        try:
            from ncsniffer import replay
            lookups = _offline_lookups(settings, env.stderr)
            return replay.replay(settings, args.read, env.stderr, quiet=args.quiet,
                                 lookups=lookups, early=early)
        finally:
            if early is not None:
                early.close()

    from ncsniffer import pidfile
    piddir = configfile.check_piddir(config)
    pid_path = os.path.join(piddir, name + ".pid")
    if verb == "status":
        pid = pidfile.running_pid(pid_path, name)
        if pid:
            env.stderr.write(f"{pid} {name} is running\n")
            return EXIT_OK
        env.stderr.write(f"{name} not running\n")
        return EXIT_NOT_RUNNING
    if verb == "dump":
        pid = pidfile.running_pid(pid_path, name)
        if not pid:
            env.stderr.write(f"{name} not running\n")
            return EXIT_OK
        import signal
        os.kill(pid, signal.SIGUSR1)
        return EXIT_OK
    if verb == "events":
        return follow_events(piddir, name, pid_path, env)
    if verb == "stop":
        if not stop(pid_path, name):
            env.stderr.write(f"{name}: not running\n")
        return EXIT_OK
    from ncsniffer import config as configmod
    settings = configmod.validate(config, name, to_stderr=args.debug)
    if verb == "config":
        env.stdout.write(configmod.describe(settings))
        return EXIT_OK
    if verb == "restart":
        stop(pid_path, name)
    elif pidfile.running_pid(pid_path, name):
        env.stderr.write("already running\n")
        return EXIT_OK
    from ncsniffer import daemon
    return daemon.start(settings, foreground=args.debug or args.foreground, log_stream=env.stderr)


def follow_events(piddir: str, name: str, pid_path: str, env: Env) -> int:
    """``events``: the daemon's feed to stdout until it ends or Ctrl-C."""
    from ncsniffer import events, pidfile
    out = getattr(env.stdout, "buffer", None)

    def write(data: bytes) -> None:
        if out is not None:
            out.write(data)
            out.flush()
        else:
            env.stdout.write(data.decode("utf-8", errors="replace"))
    try:
        events.follow(events.feed_path(piddir, name), name, write,
                      running=lambda: bool(pidfile.running_pid(pid_path, name)))
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return EXIT_OK


def _offline_lookups(settings, log):
    """Name lookups while replaying, when wanted."""
    if not settings.resolve:
        return None
    from ncsniffer import resolver
    return resolver.offline_lookups(settings, log=log)


def stop(pid_path: str, name: str, wait: float = STOP_WAIT) -> bool:
    """SIGTERM the daemon, wait for it to exit, SIGKILL it after ``wait`` seconds.

    Returns False if it was not running.
    """
    import signal

    from ncsniffer import pidfile
    pid = pidfile.running_pid(pid_path, name)
    if not pid:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    from ncsniffer import host
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not host.process_exists(pid):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    for _ in range(100):
        if not host.process_exists(pid):
            break
        time.sleep(0.05)
    pidfile.remove_pid(pid_path, pid)
    return True
