"""captioning-gradflow (not yet implemented)."""


def main() -> None:
    print("captioning-gradflow: not yet implemented")
