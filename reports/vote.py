"""Blind A/B voting server: `python reports/vote.py --db studies/votes.sqlite --port 8502`
(see reports/voteapp.py for why this is a Starlette app and not a Streamlit page)."""
import sys

from reports.voteapp import main

if __name__ == "__main__":
    sys.exit(main())
