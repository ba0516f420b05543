"""Coverage-guided fuzzing of the parser and the evaluator with atheris (``pip install atheris``).

    python3 tests/fuzz/fuzz_parser.py -max_total_time=600 -max_len=4096 /tmp/lt-fuzz-corpus tests/fuzz/corpus

(any libFuzzer option: ``-atheris_runs=N``, ``-jobs``/``-workers``, ``-artifact_prefix=DIR/``...). The first corpus
directory receives the new interesting inputs; ``tests/fuzz/corpus`` holds the seeds, to which the bundled
examples and the test rulesets are added at start. The property checked is in ``harness.py``; a violation is
an uncaught exception, and libFuzzer writes the input to ``crash-<sha1>``: turn it into a test in
``tests/fuzz/test_regressions.py``.
"""
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import atheris  # noqa: E402

with atheris.instrument_imports(include=['datadog_checks.loopback_traffic', 'loopback_traffic']):
    from tests.fuzz import harness  # noqa: E402


def test_one_input(data: bytes) -> None:
    harness.check_bytes(data)


def _write_seeds(directory: str) -> None:
    """Put the seeds (examples, test rulesets) into the writable corpus directory, once."""
    os.makedirs(directory, exist_ok=True)
    for index, seed in enumerate(harness.seeds()):
        path = os.path.join(directory, 'seed-{:03d}'.format(index))
        if not os.path.exists(path):
            with open(path, 'wb') as out:
                out.write(seed)


def main() -> None:
    corpora = [arg for arg in sys.argv[1:] if not arg.startswith('-')]
    if corpora:
        _write_seeds(corpora[0])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == '__main__':
    main()
