"""``labquake presets``: the pretrained models that ship with the package, one line
each (record, target, size, test scores from its model card); ``--card NAME`` prints
one card whole."""

import json

from labquake_tf.models import saving
from labquake_tf.task import describe


def add_arguments(parser):
    parser.add_argument("--card", default=None, metavar="NAME",
                        help="print this preset's model card (JSON)")


def run(args):
    if args.card:
        saving.resolve(args.card)  # an unknown name is the one-line error listing the rest
        print(json.dumps(saving.shipped_card(args.card), indent=2))
        return 0
    names = saving.shipped_names()
    if not names:
        print("no presets installed (scripts/build_presets.py builds them)")
    for name in names:
        print(describe(name))
    return 0
