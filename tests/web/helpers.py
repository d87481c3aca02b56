"""What the browser tests do often: sign in through the form, read the page."""
from __future__ import annotations

import re

from playwright.sync_api import expect


def sign_in(page, web, role: str | None = None, *, username: str | None = None,
            password: str | None = None) -> None:
    """Sign in through the form: with `role`'s API token, or as a person."""
    page.goto("/ui/sign-in")
    if role is not None:
        page.get_by_label("API token").fill(web.tokens[role])
        page.get_by_role("button", name="Sign in with token").click()
    else:
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def csrf_of(page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def visible_text(page) -> str:
    return re.sub(r"\s+", " ", page.locator("body").inner_text())
