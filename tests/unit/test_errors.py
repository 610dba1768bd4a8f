"""Which failures to read a table are the storage's (exit 3) rather than a missing table (exit 2)."""

from __future__ import annotations

import pytest

from segscale.errors import StorageError, raise_if_storage_unreachable

URI = "/srv/wh/customer_scores"
ARROW = "\x1b[31m↳\x1b[0m"  # delta-rs nests causes one per line, each behind a coloured arrow


def nested(*causes: str) -> str:
    return "\n".join(f"{' ' * (10 + i)}{ARROW} {cause}" if i else cause for i, cause in enumerate(causes)) + "\n"


# Messages of delta-rs 1.6: a user without permission on the table's directory; the same user on a table under a
# directory they may not enter (the form delta-rs gives a path it cannot stat, here with the permission's code); an
# S3 endpoint nothing listens on. The tests may run as root, whom no mode denies, so the local cases are checked on
# their messages; tests/process/test_faults.py reads a real unreachable store through the CLI.
@pytest.mark.parametrize(("error", "cause"), [
    (OSError(nested("Kernel error -> Generic LocalFileSystem error",
                    f"Unable to open file {URI}/_delta_log/_last_checkpoint", "Permission denied (os error 13)")),
     "Kernel error -> Generic LocalFileSystem error: Permission denied (os error 13)"),
    (Exception(f'Local path "{URI}" does not exist or you don\'t have access!\n'
               'Error: Os { code: 13, kind: PermissionDenied, message: "Permission denied" }'),
     f'Local path "{URI}" does not exist or you don\'t have access!: '
     'Error: Os { code: 13, kind: PermissionDenied, message: "Permission denied" }'),
    (OSError(nested("Kernel error -> Generic S3 error", "Error performing GET http://127.0.0.1:9/b/_delta_log",
                    "tcp connect error", "Connection refused (os error 111)")),
     "Kernel error -> Generic S3 error: Connection refused (os error 111)"),
])
def test_a_refused_or_unreachable_storage_is_a_storage_error_naming_the_table_and_the_cause(error, cause):
    with pytest.raises(StorageError) as raised:
        raise_if_storage_unreachable(error, URI)
    assert str(raised.value).startswith(f"cannot read {URI}: the warehouse storage refused the read or could "
                                        f"not be reached ({cause}).")
    assert raised.value.exit_code == 3


@pytest.mark.parametrize("error", [
    Exception(f'Local path "{URI}" does not exist or you don\'t have access!\n'
              'Error: Os { code: 2, kind: NotFound, message: "No such file or directory" }'),
    Exception(f'Local path "{URI}" does not exist or you don\'t have access!\n'
              'Error: Os { code: 20, kind: NotADirectory, message: "Not a directory" }'),
    Exception("Invalid table version: 403"),
])
def test_a_missing_table_or_version_is_left_to_the_caller(error):
    assert raise_if_storage_unreachable(error, URI) is None
