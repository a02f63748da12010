"""``python -m mask_service``: run the mask service (see ``--help``)."""

import sys

from mask_service.service import main

if __name__ == "__main__":
    sys.exit(main())
