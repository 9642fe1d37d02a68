"""python -m coser.protocol check DIR"""
import sys

from .check import main

sys.exit(main(sys.argv[1:]))
