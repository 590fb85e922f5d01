from setuptools import Extension, setup

# The connection tracking core (spec 10): plain C against the Python headers
# (python3-dev, installed by tools/ensure-system); ncsniffer/conntrack_ref.py
# holds the same rules in Python.  The events' JSON lines (10.4): ncsniffer/events.py
# holds the same formatter in Python.  The stats file's record lines: dumpfile.py
# holds the same formatter in Python.  The replay's read path (issue 16): the numpy
# pcapfile walk and batch.prepare hold the same rules.
FLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"]
setup(ext_modules=[Extension("ncsniffer._conntrack", ["ncsniffer/_conntrack.c"],
                             extra_compile_args=FLAGS),
                   Extension("ncsniffer._eventtext", ["ncsniffer/_eventtext.c"],
                             extra_compile_args=FLAGS),
                   Extension("ncsniffer._dumptext", ["ncsniffer/_dumptext.c"],
                             extra_compile_args=FLAGS),
                   Extension("ncsniffer._fastread", ["ncsniffer/_fastread.c"],
                             extra_compile_args=FLAGS)])
