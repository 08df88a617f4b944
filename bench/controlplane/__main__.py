import sys

from bench.controlplane.run import main

if __name__ == "__main__":
    sys.exit(main())
