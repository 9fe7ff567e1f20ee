"""Helpers shared by the tests that plant faults in bundles."""
from bsconv_export.exporter.bundle.on_disk import entry_digest
from bsconv_export.exporter.bundle.manifest_io import read_manifest, write_manifest
from bsconv_export.exporter.kit.records import path_sha256


def rehash(bundle):
    """Record the artifacts' current sha256 (and every recorded file's digest) in the manifest, the
    tool's own way: a planted fault then looks like an export bug (consistent bundle, wrong
    numbers), not a tampered file."""
    m = read_manifest(bundle)
    for a in m.artifacts:
        if a.path:
            a.sha256 = path_sha256(bundle / a.path)
    if m.files is not None:
        m.files = {name: entry_digest(bundle / name) for name in m.files if (bundle / name).exists()}
    write_manifest(bundle, m)
