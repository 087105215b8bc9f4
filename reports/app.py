"""Results browser: `streamlit run reports/app.py -- --runs runs/` (see reports/browser.py).

Serves the page script reports/page.py as a Streamlit App whose start-up imports what the page
needs and reads the runs folder's tables into the page's cache, so the first visitor does not wait
for them (benchmarks/reports_bench.py measures both the start-up and the first page)."""
from contextlib import asynccontextmanager

import streamlit as st


@asynccontextmanager
async def warm_up(app):
    from reports import browser

    browser.warm_up()
    yield


app = st.App("page.py", lifespan=warm_up)
