"""
The coursework: ten exercises from tokens to a verified circuit (README.md in this folder).

    exercises.py   your code: the ten stubs
    checks.py      the checkers, check_N(fn) -> (ok, message)
    solutions.py   the reference solutions, thin wrappers over the project's code
    __main__.py    the command: `python -m coursework --help`, run from the repository root
"""
