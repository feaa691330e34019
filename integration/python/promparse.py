#!/usr/bin/python3
"""Parses Prometheus text (stdin) with the reference Python client's parser
and prints every sample as JSON: [[name, {labels}, value], ...]. A text the
parser refuses exits non-zero with its error."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
types = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump({"types": types, "samples": samples}, sys.stdout)
