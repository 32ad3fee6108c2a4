"""`python -m keras_gmlp.convert`: the timm checkpoint converter's command line
(keras_gmlp.convert.cli)."""

import sys

from keras_gmlp.convert.cli import main

sys.exit(main())
