from setuptools import Extension, setup

# The connection tracking core (spec 10): plain C against the Python headers
# (python3-dev, installed by tools/ensure-system); ncsniffer/conntrack_ref.py
# holds the same rules in Python.
setup(ext_modules=[Extension("ncsniffer._conntrack", ["ncsniffer/_conntrack.c"],
                             extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra",
                                                 "-Wno-unused-parameter"])])
