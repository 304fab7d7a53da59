"""captioning-eval (not yet implemented)."""


def main() -> None:
    print("captioning-eval: not yet implemented")
