"""Results browser: `streamlit run reports/app.py -- --runs runs/` (see reports/browser.py)."""
from reports.browser import main

main()
