"""Coverage-guided fuzzing (atheris/libFuzzer) of the protocol decoders and the Noise state
machine. Targets: tests/fuzz/targets.py. CI runs each for a fixed number of inputs
(tests/test_fuzz.py); run longer on demand:

    python -m tests.fuzz --seconds 600                  every target, 600 s each
    python -m tests.fuzz --target frames --seconds 60   one target
    python -m tests.fuzz --list

A crash leaves its input in tests/fuzz/crashes/<target>-crash-<sha1>; copy it to
tests/fuzz/regressions/<target>/ and tests/test_fuzz.py replays it from then on.
"""
