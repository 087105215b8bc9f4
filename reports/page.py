"""The results browser's page script (reports/app.py serves it; see reports/browser.py)."""
from reports.browser import main

main()
