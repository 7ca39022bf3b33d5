
# (tests/conftest.py puts the source tree on sys.path when llmcore is not installed:
# an unconditional insert here would make spawned processes import the uninstalled tree)
