"""captioning-train (not yet implemented)."""


def main() -> None:
    print("captioning-train: not yet implemented")
