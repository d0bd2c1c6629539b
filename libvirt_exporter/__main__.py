"""`python -m libvirt_exporter`: the same entry point as the `libvirt-exporter` script."""

from libvirt_exporter.cli import main

raise SystemExit(main())
