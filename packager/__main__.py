"""``python -m packager`` is the ``edgepack`` command."""
from packager.cli import main

main()
