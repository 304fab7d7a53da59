"""captioning-caption (not yet implemented)."""


def main() -> None:
    print("captioning-caption: not yet implemented")
