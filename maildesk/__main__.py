"""`python -m maildesk`."""

from maildesk.cli import main

if __name__ == "__main__":
    main()
