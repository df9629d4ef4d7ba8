"""``python -m blackbox.cli``: the ``lora-blackbox`` command (how evaluation processes are started)."""

from blackbox.cli.main import main

main()
