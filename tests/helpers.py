"""Helpers shared by the tests that plant faults in bundles."""
from bsconv_export.exporter.manifest import read_manifest, write_manifest
from bsconv_export.exporter.records import path_sha256


def rehash(bundle):
    """Record the artifacts' current sha256 in the manifest: a planted fault then looks like
    an export bug (consistent bundle, wrong numbers), not a tampered file."""
    m = read_manifest(bundle)
    for a in m.artifacts:
        if a.path:
            a.sha256 = path_sha256(bundle / a.path)
    write_manifest(bundle, m)
