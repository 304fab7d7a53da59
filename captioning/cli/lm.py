"""captioning-lm (not yet implemented)."""


def main() -> None:
    print("captioning-lm: not yet implemented")
