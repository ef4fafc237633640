"""The web console in a real browser (headless Debian Chromium through Selenium) against a real
server process without DEBUG, as deployed: sign in, spaces, the live star map, streamed chat,
forks, prompts, stopping a reply, a reload mid-stream, approving and denying tool calls, usage,
and the first-render time of a 200-session star map (printed, not asserted). A loopback
OpenAI-compatible LLM streams slowly where a test must act in the middle of a reply.

Screenshots go to the test's tmp dir; with STELLO_CONSOLE_SCREENSHOTS=1 they are also written to
docs/img/ for the README."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HAS_BROWSER
from tests.support.servers import (
    Server,
    committed_tenant,
    http_json,
    server_env,
    server_processes,
)

pytestmark = [pytest.mark.browser, pytest.mark.servers, pytest.mark.postgres,
              pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20  # seconds for anything the page must show


@pytest.fixture(scope="module")
def server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0", STELLO_CONSOLIDATE_ON_ARCHIVE="0")
    with server_processes([env], tmp_path_factory.mktemp("console")) as (one,):
        yield one


@pytest.fixture(scope="module")
def browser():
    if not HAS_BROWSER:  # only reached with STELLO_REQUIRE_SERVICES=1: CI must have one
        pytest.fail("the browser tests need chromium, chromium-driver (apt-get install -y "
                    "chromium chromium-driver) and selenium (requirements-dev.txt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(autouse=True)
def leave_the_page(browser) -> Iterator[None]:
    """After each test the page goes away before the database is flushed: its tree polling
    and WebSocket would otherwise keep reading the tables being truncated (a deadlock). It
    goes once its requests are answered: the server would finish them after it left."""
    yield
    from selenium.common.exceptions import TimeoutException

    try:
        wait(browser, lambda d: d.execute_script(
            "const c = window.stelloConsole; return !c || (c.state.inflight === 0"
            " && !(c.state.socket && c.state.socket.pending.length))"), timeout=10)
    except TimeoutException:
        pass  # a test that failed mid-way: leave anyway
    browser.get("about:blank")


def wait(driver, condition, timeout: float = WAIT):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page redraws lists and the map as data arrives: an element found a moment ago may be
    # gone, which only means "not yet".
    return WebDriverWait(driver, timeout, ignored_exceptions=[
        StaleElementReferenceException]).until(condition)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def csss(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def fresh_page(driver, server: Server) -> None:
    """The console, signed out (sessionStorage outlives a reload)."""
    driver.get(server.http("/console/"))
    # A stored key signs the page in (and stores the key again): let that finish first.
    wait(driver, lambda d: css(d, "#key-input").is_displayed() or css(d, "#status").text)
    driver.execute_script("sessionStorage.clear()")
    driver.get("about:blank")
    driver.get(server.http("/console/"))
    wait(driver, lambda d: css(d, "#key-input").is_displayed())


def sign_in(driver, server: Server, key: str) -> None:
    fresh_page(driver, server)
    css(driver, "#key-input").send_keys(key)
    css(driver, "#key-form button").click()
    wait(driver, lambda d: css(d, "#app").is_displayed())


def open_space(driver, label: str) -> None:
    wait(driver, lambda d: any(b.text == label for b in csss(d, "#space-list button")))
    next(b for b in csss(driver, "#space-list button") if b.text == label).click()
    wait(driver, lambda d: csss(d, "#map-box svg .star"))


def star_count(driver) -> int:
    return driver.execute_script("return document.querySelectorAll('#map-box svg .star').length")


def attr(driver, selector: str, name: str) -> str | None:
    """Read in one script: the map is redrawn when the tree changes, which would leave a found
    element stale."""
    return driver.execute_script(
        "return document.querySelector(arguments[0])?.getAttribute(arguments[1]) ?? null",
        selector, name)


def star_labels(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#map-box .star')]"
                                 ".map(s => s.getAttribute('aria-label'))")


def open_star(driver, session_id: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException

    def click(d) -> bool:
        try:  # the circle, not the group: the group's centre may be on its label
            css(d, f'#map-box .star[data-id="{session_id}"] circle').click()
            return True
        except StaleElementReferenceException:  # redrawn by a tree refresh meanwhile
            return False

    wait(driver, click)
    wait(driver, lambda d: css(d, "#session-body").is_displayed()
         and d.execute_script("return window.stelloConsole.state.socket?.entered") == session_id)


def screenshot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("STELLO_CONSOLE_SCREENSHOTS") == "1":
        (ROOT / "docs" / "img").mkdir(exist_ok=True)
        shutil.copy(path, ROOT / "docs" / "img" / name)


def test_sign_in_create_a_space_stream_a_turn_fork_and_edit_a_prompt(
        server: Server, browser, tmp_path) -> None:
    tenant = committed_tenant("console-alice", "existing")
    key = tenant["key"]
    sign_in(browser, server, key)

    css(browser, "#create-label").send_keys("Trip planning")
    css(browser, "#create-form button").click()
    wait(browser, lambda d: "Created Trip planning" in css(d, "#status").text)
    status, spaces = http_json("GET", server.http("/spaces"), key)
    space = next(s for s in spaces if s["label"] == "Trip planning")
    assert star_count(browser) == 1
    main_id = attr(browser, "#map-box .star.main", "data-id")

    open_star(browser, main_id)
    css(browser, "#chat-input").send_keys("plan a weekend in Lisbon")
    css(browser, "#chat-form button").click()
    wait(browser, lambda d: "echo: plan a weekend in Lisbon" in css(d, "#chat").text)
    wait(browser, lambda d: attr(d, f'.star[data-id="{main_id}"]', "data-turns") == "1")
    status, messages = http_json("GET", server.http(
        f"/spaces/{space['id']}/sessions/{main_id}/messages"), key)
    assert [m["content"] for m in messages] == ["plan a weekend in Lisbon",
                                                 "echo: plan a weekend in Lisbon"]

    for label in ("Food", "Museums"):
        css(browser, "#fork-label").send_keys(label)
        css(browser, "#fork-form button").click()
        wait(browser, lambda d, label=label: f"Forked {label}" in css(d, "#status").text)
    wait(browser, lambda d: star_count(d) == 3)
    labels = {label.split(",")[0] for label in star_labels(browser)}
    assert labels == {"Trip planning", "Food", "Museums"}
    status, tree = http_json("GET", server.http(f"/spaces/{space['id']}/sessions"), key)
    assert sorted(c["label"] for c in tree["children"]) == ["Food", "Museums"]

    # Edit the opened session's system prompt from the memory panel.
    css(browser, "#mem-system summary").click()
    field = css(browser, "#slot-system-prompt")
    field.clear()
    field.send_keys("You plan trips.")
    css(browser, '[data-save="system-prompt"]').click()
    wait(browser, lambda d: "Saved the system prompt" in css(d, "#status").text)
    status, body = http_json("GET", server.http(
        f"/spaces/{space['id']}/sessions/{main_id}/system-prompt"), key)
    assert body == {"content": "You plan trips."}

    # Rename the space.
    label_field = css(browser, "#space-label")
    label_field.clear()
    label_field.send_keys("Lisbon trip")
    css(browser, "#space-form button").click()
    wait(browser, lambda d: any(b.text == "Lisbon trip" for b in csss(d, "#space-list button")))
    assert http_json("GET", server.http(f"/spaces/{space['id']}"), key)[1]["label"] == (
        "Lisbon trip")
    # The rename sent only the label: the main session's prompt, edited above, stands.
    assert http_json("GET", server.http(
        f"/spaces/{space['id']}/sessions/{main_id}/system-prompt"), key)[1] == {
        "content": "You plan trips."}

    # A child: open it, talk, archive it.
    food_id = attr(browser, '#map-box .star[aria-label^="Food,"]', "data-id")
    open_star(browser, food_id)
    css(browser, "#chat-input").send_keys("tapas?")
    css(browser, "#chat-form button").click()
    wait(browser, lambda d: "echo: tapas?" in css(d, "#chat").text)
    wait(browser, lambda d: "1 turn" in css(d, "#session-meta").text)
    screenshot(browser, tmp_path, "console-chat.png")
    css(browser, "#archive").click()
    wait(browser, lambda d: attr(d, f'.star[data-id="{food_id}"]', "data-status") == "archived")
    assert http_json("GET", server.http(
        f"/spaces/{space['id']}/sessions/{food_id}"), key)[1]["status"] == "archived"

    # Phone width: nothing wider than the screen.
    browser.set_window_size(390, 844)
    try:
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1400, 1000)


def test_a_fork_and_a_turn_made_over_rest_appear_live(server: Server, browser) -> None:
    tenant = committed_tenant("console-bob", "live")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    sign_in(browser, server, key)
    open_space(browser, "live")
    open_star(browser, root_id)
    browser.execute_script("window.notReloaded = true")

    status, child = http_json("POST", server.http(
        f"/spaces/{space_id}/sessions/{root_id}/fork"), key, {"label": "made elsewhere"})
    assert status == 201
    wait(browser, lambda d: attr(d, f'.star[data-id="{child["id"]}"]', "data-id"))
    assert star_count(browser) == 2

    # A turn on the open session elsewhere: the watch frame brings it into the chat.
    assert http_json("POST", server.http(f"/spaces/{space_id}/sessions/{root_id}/turn"),
                     key, {"input": "from curl"})[0] == 200
    wait(browser, lambda d: "echo: from curl" in css(d, "#chat").text)
    assert browser.execute_script("return window.notReloaded") is True


def test_a_star_map_of_200_sessions_renders_and_stays_usable(
        server: Server, browser, tmp_path) -> None:
    tenant = committed_tenant("console-carol", "big")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    parents = [root_id]
    forks = set()
    for n in range(199):  # a bushy tree: every fourth session gets forks of its own
        source = parents[n % len(parents)]
        status, child = http_json("POST", server.http(
            f"/spaces/{space_id}/sessions/{source}/fork"), key, {"label": f"s{n}"})
        assert status == 201
        forks.add(f"{source}>{child['id']}")
        if n % 4 == 0:
            parents.append(child["id"])
    sign_in(browser, server, key)
    open_space(browser, "big")
    wait(browser, lambda d: d.execute_script(
        "return window.stelloConsole.metrics.firstRender?.sessions") == 200)
    metrics = browser.execute_script("return window.stelloConsole.metrics.firstRender")
    print(f"\nstar map first render, 200 sessions: {metrics['totalMs']} ms "
          f"(of which fetching {metrics['fetchMs']} ms)")
    screenshot(browser, tmp_path, "console-star-map-200.png")

    # Each session is joined to the one it was forked from.
    lines = browser.execute_script("return [...document.querySelectorAll('#map-box line.edge')]"
                                   ".map(l => l.dataset.from + '>' + l.dataset.to)")
    assert set(lines) == forks

    # Readable: every star is inside the map and big enough to hit, none on top of another.
    rects = browser.execute_script("""
        const box = document.querySelector('#map-box svg').getBoundingClientRect();
        return [box, [...document.querySelectorAll('#map-box .star circle')].map(
            c => c.getBoundingClientRect())];""")
    box, stars = rects
    assert len(stars) == 200
    for r in stars:
        assert box["left"] <= r["left"] and r["right"] <= box["right"]
        assert box["top"] <= r["top"] and r["bottom"] <= box["bottom"]
        assert r["width"] >= 5
    centres = [(r["left"] + r["width"] / 2, r["top"] + r["height"] / 2) for r in stars]
    overlapping = sum(1 for i, (x, y) in enumerate(centres) for (u, v) in centres[i + 1:]
                      if (x - u) ** 2 + (y - v) ** 2 < 4 ** 2)
    assert overlapping == 0

    # Keyboard: a star takes focus and Enter opens its session.
    from selenium.webdriver.common.keys import Keys

    star = css(browser, '.star[aria-label^="s7,"]')
    browser.execute_script("arguments[0].focus()", star)
    star.send_keys(Keys.ENTER)
    wait(browser, lambda d: css(d, "#session-title").text == "Session: s7")


def test_delete_with_confirmation_bad_keys_and_labels(server: Server, browser) -> None:
    tenant = committed_tenant("console-dave", "doomed")
    key, space_id = tenant["key"], tenant["space_id"]

    fresh_page(browser, server)
    css(browser, "#key-input").send_keys("stello_nope_nope")
    css(browser, "#key-form button").click()
    wait(browser, lambda d: "Invalid API key" in css(d, "#status").text)
    assert not css(browser, "#app").is_displayed()
    assert browser.execute_script("return sessionStorage.length") == 0

    # Every form field has a label.
    unlabeled = browser.execute_script("""
        return [...document.querySelectorAll('input:not([type=hidden]), textarea')]
            .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id);""")
    assert unlabeled == []

    sign_in(browser, server, key)
    assert browser.execute_script("return sessionStorage.length") == 1
    open_space(browser, "doomed")
    css(browser, "#delete-space").click()
    css(browser, "#confirm-delete button[value=cancel]").click()
    assert http_json("GET", server.http(f"/spaces/{space_id}"), key)[0] == 200
    css(browser, "#delete-space").click()
    assert "doomed" in css(browser, "#confirm-name").text
    css(browser, "#confirm-yes").click()
    wait(browser, lambda d: "Deleted doomed" in css(d, "#status").text)
    assert http_json("GET", server.http(f"/spaces/{space_id}"), key)[0] == 404
    assert not [b for b in csss(browser, "#space-list button") if b.text == "doomed"]

    css(browser, "#sign-out").click()
    assert browser.execute_script("return sessionStorage.length") == 0
    assert css(browser, "#sign-in").is_displayed()


@pytest.fixture(scope="module")
def scripted_server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    """A server whose offline LLM first calls the built-in fork tool, then answers."""
    logs = tmp_path_factory.mktemp("console-scripted")
    script = logs / "script.json"
    script.write_text(json.dumps([
        {"content": "Opening a session for that.", "toolCalls": [
            {"id": "call_1", "name": "stello_create_session", "input": {"label": "Hotels"}}]},
        {"content": "I opened a Hotels session."},
    ]))
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0", STELLO_CONSOLIDATE_ON_ARCHIVE="0",
                     STELLO_LLM_SCRIPT=str(script))
    with server_processes([env], logs) as (one,):
        yield one


def test_tool_calls_are_shown_and_the_llms_own_fork_appears(scripted_server: Server,
                                                            browser) -> None:
    tenant = committed_tenant("console-erin", "tools")
    key, root_id = tenant["key"], tenant["root_id"]
    sign_in(browser, scripted_server, key)
    open_space(browser, "tools")
    open_star(browser, root_id)
    css(browser, "#chat-input").send_keys("find hotels")
    css(browser, "#chat-form button").click()
    wait(browser, lambda d: "I opened a Hotels session." in css(d, "#chat").text
         and csss(d, "#chat li.tool"))
    assert "tool call: stello_create_session" in css(browser, "#chat").text
    assert "tool result (call_1)" in css(browser, "#chat li.tool").text.lower()
    wait(browser, lambda d: any(label.startswith("Hotels,") for label in star_labels(d)))
    assert star_count(browser) == 2


FORK = "stello_create_session"


def fork_call(call_id: str, label: str) -> dict[str, Any]:
    return {"id": call_id, "name": FORK, "input": {"label": label}}


@pytest.fixture(scope="module")
def approval_server(django_db_setup, tmp_path_factory) -> Iterator[Server]:
    """A server whose offline LLM calls the built-in fork tool in three turns (the calls wait
    for a human's approval where the space says so), each answered after its tool results."""
    logs = tmp_path_factory.mktemp("console-approvals")
    script = logs / "script.json"
    script.write_text(json.dumps([
        {"content": "Opening a session for that.",
         "toolCalls": [fork_call("call_deny", "<img src=x onerror=window.pwned=1> Flights")]},
        {"content": "Fine, no new session."},
        {"content": "Opening a session for that.", "toolCalls": [fork_call("call_ok", "Hotels")]},
        {"content": "I opened a Hotels session."},
        {"content": "Opening three sessions.", "toolCalls": [
            fork_call("call_reload", "Museums"), fork_call("call_curl", "Galleries"),
            fork_call("call_late", "Parks")]},
        {"content": "Done with museums."},
    ]))
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0", STELLO_CONSOLIDATE_ON_ARCHIVE="0",
                     STELLO_LLM_SCRIPT=str(script))
    with server_processes([env], logs) as (one,):
        yield one


def approval_card(driver, call_id: str):
    """The chat's card for `call_id`, once its Approve and Deny buttons are there."""
    wait(driver, lambda d: csss(d, f'#chat li.approval[data-call-id="{call_id}"] button.deny'))
    return css(driver, f'#chat li.approval[data-call-id="{call_id}"]')


def card_outcome(driver, call_id: str) -> str:
    return driver.execute_script(
        "return document.querySelector(`#chat li.approval[data-call-id=\"${arguments[0]}\"]"
        " .outcome`)?.textContent ?? ''", call_id)


def test_tool_calls_wait_for_approve_or_deny_in_the_chat_even_after_a_reload(
        approval_server: Server, browser, tmp_path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    server = approval_server
    tenant = committed_tenant("console-ivan", "approvals")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    assert http_json("PATCH", server.http(f"/spaces/{space_id}"), key,
                     {"config": {"approveTools": [FORK]}})[0] == 200
    base = f"/spaces/{space_id}/sessions/{root_id}"
    sign_in(browser, server, key)
    open_space(browser, "approvals")
    open_star(browser, root_id)

    # Deny, with a reason, by keyboard. The arguments are the LLM's: shown as text, never run.
    css(browser, "#chat-input").send_keys("book a flight", Keys.ENTER)
    card = approval_card(browser, "call_deny")
    assert f"{FORK} wants to run" in card.text
    assert '"label": "<img src=x onerror=window.pwned=1> Flights"' in card.find_element(
        By.CSS_SELECTOR, "pre.arguments").text
    assert not card.find_elements(By.TAG_NAME, "img")
    assert browser.execute_script("return window.pwned") is None
    [turn] = http_json("GET", server.http(f"{base}/turns"), key)[1]
    assert turn["status"] == "waiting"
    assert css(browser, "#stop").is_displayed()  # a waiting turn can be stopped like any
    screenshot(browser, tmp_path, "console-approval.png")
    reason = card.find_element(By.CSS_SELECTOR, "input")
    assert reason.get_attribute("id") in browser.execute_script(
        "return [...document.querySelectorAll('#chat li.approval label')].map(l => l.htmlFor)")
    reason.send_keys("not today", Keys.TAB)
    assert browser.switch_to.active_element.text == "Approve"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert browser.switch_to.active_element.text == "Deny"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait(browser, lambda d: "Denied (not today)" in card_outcome(d, "call_deny"))
    assert not csss(browser, '#chat li.approval[data-call-id="call_deny"] button')
    assert active_id(browser) == "chat-input"  # the focus is not lost with the buttons
    # The reply goes on; the card stays in the history, after the call it answered.
    wait(browser, lambda d: "Fine, no new session." in css(d, "#chat").text
         and not csss(d, "#chat [aria-busy=true]"))
    assert "Denied (not today)" in card_outcome(browser, "call_deny")
    assert browser.execute_script(
        "const card = document.querySelector('#chat li.approval');"
        "return card.previousElementSibling.querySelector('details')?.dataset.callId") == (
        "call_deny")
    [denied] = http_json("GET", server.http(
        f"{base}/turns/{turn['turnId']}/approvals"), key)[1]
    assert (denied["status"], denied["reason"]) == ("denied", "not today")
    tool_results = [m["content"] for m in http_json(
        "GET", server.http(f"{base}/messages"), key)[1] if m["role"] == "tool"]
    assert tool_results == ["Not run: the user denied this tool call (not today)."]
    assert http_json("GET", server.http(f"/spaces/{space_id}/sessions"), key)[1][
        "children"] == []
    assert star_count(browser) == 1

    # Approve, with the mouse: the child appears in the star map.
    css(browser, "#chat-input").send_keys("find hotels", Keys.ENTER)
    approval_card(browser, "call_ok").find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(browser, lambda d: card_outcome(d, "call_ok").startswith("Approved"))
    wait(browser, lambda d: "I opened a Hotels session." in css(d, "#chat").text)
    wait(browser, lambda d: any(label.startswith("Hotels,") for label in star_labels(d)))
    assert star_count(browser) == 2

    # A reload while a turn waits: its cards come back, once each.
    css(browser, "#chat-input").send_keys("museums, galleries, parks", Keys.ENTER)
    for call_id in ("call_reload", "call_curl", "call_late"):
        approval_card(browser, call_id)
    browser.refresh()
    wait(browser, lambda d: d.execute_script(
        "return window.stelloConsole?.state.socket?.entered") == root_id)
    museums = approval_card(browser, "call_reload")
    for call_id in ("call_curl", "call_late"):
        approval_card(browser, call_id)
    assert len(csss(browser, "#chat li.approval")) == 3  # those of the finished turns went
    assert css(browser, "#chat").text.count("museums, galleries, parks") == 1
    assert "Museums" in museums.text
    assert css(browser, "#stop").is_displayed()

    # An answer given elsewhere shows on its card (the page asks while a card waits: the log
    # tells only once the whole round is answered).
    [waiting] = [t for t in http_json("GET", server.http(f"{base}/turns"), key)[1]
                 if t["status"] == "waiting"]
    approvals = server.http(f"{base}/turns/{waiting['turnId']}/approvals")
    status, body = http_json("POST", approvals, key,
                             {"callId": "call_curl", "approve": False, "reason": "asked elsewhere"})
    assert status == 200, body
    wait(browser, lambda d: "Denied (asked elsewhere)" in card_outcome(d, "call_curl"))
    assert not csss(browser, '#chat li.approval[data-call-id="call_curl"] button')
    # Two answers that cross: this page's is refused politely, the card shows the one that won.
    browser.execute_script("clearInterval(window.stelloConsole.state.poll)")
    assert http_json("POST", approvals, key, {"callId": "call_late", "approve": True})[0] == 200
    approval_card(browser, "call_late").find_element(By.CSS_SELECTOR, "button.deny").click()
    wait(browser, lambda d: card_outcome(d, "call_late").startswith("Approved"))
    assert css(browser, "#status").text == "That tool call was answered already."
    museums.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(browser, lambda d: "Done with museums." in css(d, "#chat").text
         and not csss(d, "#chat [aria-busy=true]"))
    # The map shows the new children without its polling (stopped above): session.forked.
    wait(browser, lambda d: {label.split(",")[0] for label in star_labels(d)} == {
        "approvals", "Hotels", "Museums", "Parks"})
    assert not css(browser, "#stop").is_displayed()
    assert sorted(c["label"] for c in http_json(
        "GET", server.http(f"/spaces/{space_id}/sessions"), key)[1]["children"]) == [
        "Hotels", "Museums", "Parks"]


def test_staff_continue_from_the_admin_login_with_a_key_of_their_own(
        server: Server, browser) -> None:
    from django.contrib.auth import get_user_model

    from spaces.services import space_create

    staff = get_user_model().objects.create_user("console-staff", password="pw-console-9",
                                                 is_staff=True)
    space_create(owner=staff, label="staff space")
    fresh_page(browser, server)
    assert not csss(browser, "#staff-form")
    browser.get(server.http("/admin/login/?next=/console/"))
    css(browser, "#id_username").send_keys("console-staff")
    css(browser, "#id_password").send_keys("pw-console-9")
    css(browser, "#login-form [type=submit]").click()
    wait(browser, lambda d: csss(d, "#staff-form"))
    css(browser, "#staff-form button").click()
    wait(browser, lambda d: css(d, "#app").is_displayed())
    open_space(browser, "staff space")
    key = browser.execute_script("return sessionStorage.getItem('stello.console.key')")
    status, spaces = http_json("GET", server.http("/spaces"), key)
    assert status == 200 and [s["label"] for s in spaces] == ["staff space"]
    browser.delete_all_cookies()  # the next tests start signed out of the admin too


@pytest.fixture(scope="module")
def slow_llm():
    """A loopback OpenAI-compatible LLM: a test queues replies streamed slowly enough to stop
    or to reload the page in the middle of them (unqueued calls answer `echo: ...` at once)."""
    from tests.support.llm_servers import OpenAIServer

    with OpenAIServer() as llm:
        yield llm


@pytest.fixture(scope="module")
def slow_server(django_db_setup, slow_llm, tmp_path_factory) -> Iterator[Server]:
    env = server_env(STELLO_CONSOLIDATE_EVERY_N_TURNS="0", STELLO_CONSOLIDATE_ON_ARCHIVE="0",
                     STELLO_LLM_PROVIDER="openai", STELLO_LLM_BASE_URL=slow_llm.base_url,
                     STELLO_LLM_API_KEY="test-key", STELLO_LLM_MODEL="test-model",
                     STELLO_LLM_MAX_RETRIES="0")
    with server_processes([env], tmp_path_factory.mktemp("console-slow")) as (one,):
        yield one


def active_id(driver) -> str:
    return driver.execute_script("return document.activeElement.id")


def test_stop_cancels_a_running_reply_and_keeps_nothing(
        slow_server: Server, slow_llm, browser) -> None:
    from selenium.webdriver.common.keys import Keys

    tenant = committed_tenant("console-frank", "stoppable")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    sign_in(browser, slow_server, key)
    open_space(browser, "stoppable")
    open_star(browser, root_id)
    assert not css(browser, "#stop").is_displayed()  # nothing runs

    words = "one two three four five six seven eight nine ten eleven twelve"
    slow_llm.reply(words, chunk_delay=0.5)
    css(browser, "#chat-input").send_keys("take your time", Keys.ENTER)
    wait(browser, lambda d: "one two" in css(d, "#chat").text)
    assert css(browser, "#stop").is_displayed()
    # By keyboard: from the message field, Tab reaches Send, then Stop; Enter presses it.
    css(browser, "#chat-input").send_keys(Keys.TAB)
    assert active_id(browser) == "send"
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert active_id(browser) == "stop"
    browser.switch_to.active_element.send_keys(Keys.ENTER)

    wait(browser, lambda d: "Turn cancelled" in css(d, "#status").text)
    wait(browser, lambda d: not css(d, "#stop").is_displayed())
    assert active_id(browser) == "chat-input"  # the focus is not lost with the button
    cancelled = csss(browser, "#chat li.cancelled")
    assert len(cancelled) == 2  # the input and the partial reply, marked as not kept
    assert "cancelled, not kept" in cancelled[1].text.lower()
    assert "twelve" not in css(browser, "#chat").text
    base = f"/spaces/{space_id}/sessions/{root_id}"
    assert http_json("GET", slow_server.http(f"{base}/messages"), key)[1] == []
    turns = http_json("GET", slow_server.http(f"{base}/turns"), key)[1]
    assert [t["status"] for t in turns] == ["cancelled"]
    assert http_json("GET", slow_server.http(base), key)[1]["turnCount"] == 0

    # The session goes on: the next turn is answered and kept.
    css(browser, "#chat-input").send_keys("again", Keys.ENTER)
    wait(browser, lambda d: "echo: again" in css(d, "#chat").text
         and not csss(d, "#chat li.cancelled"))
    assert [m["content"] for m in http_json(
        "GET", slow_server.http(f"{base}/messages"), key)[1]] == ["again", "echo: again"]


def test_a_reload_mid_stream_resumes_the_reply_and_usage_is_shown(
        slow_server: Server, slow_llm, browser) -> None:
    from selenium.webdriver.common.keys import Keys

    tenant = committed_tenant("console-grace", "reloaded")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    sign_in(browser, slow_server, key)
    open_space(browser, "reloaded")
    open_star(browser, root_id)

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    slow_llm.reply(words, chunk_delay=0.5, usage=(120, 12))
    css(browser, "#chat-input").send_keys("tell me the letters", Keys.ENTER)
    wait(browser, lambda d: "alpha beta" in css(d, "#chat").text)
    stored = browser.execute_script(
        "return sessionStorage.getItem('stello.console.seq.' + arguments[0])", root_id)
    assert stored is not None

    browser.refresh()
    # The page comes back to the same session, the reply still streaming, then whole.
    wait(browser, lambda d: css(d, "#session-title").text == "Session: reloaded")
    wait(browser, lambda d: csss(d, "#chat li.assistant[aria-busy=true]"))
    assert "tell me the letters" in css(browser, "#chat").text
    wait(browser, lambda d: words in css(d, "#chat").text
         and not csss(d, "#chat [aria-busy=true]"), timeout=30)
    assert css(browser, "#chat").text.count("alpha beta") == 1
    base = f"/spaces/{space_id}/sessions/{root_id}"
    assert [m["content"] for m in http_json(
        "GET", slow_server.http(f"{base}/messages"), key)[1]] == ["tell me the letters", words]

    # Usage: this session's and the space's, from GET /spaces/{id}/usage?groupBy=session.
    def cells(row: str) -> list[str]:
        return browser.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' td')].map(c => c.textContent)",
            row)

    wait(browser, lambda d: cells("#usage-session")[:3] == ["1", "120", "12"])
    assert cells("#usage-space")[:3] == ["1", "120", "12"]
    assert css(browser, "#usage-session td:last-child").text.startswith("$")


def test_a_kept_position_ahead_of_the_log_falls_back_to_the_newest(server: Server,
                                                                   browser) -> None:
    """A position kept from an earlier database (or a forged one) is refused by the server;
    the console resumes from the newest seq instead and the chat works."""
    from selenium.webdriver.common.keys import Keys

    tenant = committed_tenant("console-heidi", "stale")
    key, space_id, root_id = tenant["key"], tenant["space_id"], tenant["root_id"]
    sign_in(browser, server, key)
    browser.execute_script(
        "sessionStorage.setItem('stello.console.seq.' + arguments[0], '999999');"
        "sessionStorage.setItem('stello.console.open', JSON.stringify("
        "{spaceId: arguments[1], sessionId: arguments[0]}))", root_id, space_id)
    browser.refresh()
    wait(browser, lambda d: d.execute_script(
        "return window.stelloConsole.state.socket?.entered") == root_id)
    css(browser, "#chat-input").send_keys("still here?", Keys.ENTER)
    wait(browser, lambda d: "echo: still here?" in css(d, "#chat").text)
    # Once the turn has ended, the kept position is past it (and nowhere near the forged one).
    wait(browser, lambda d: 0 < d.execute_script(
        "return Number(sessionStorage.getItem('stello.console.seq.' + arguments[0]))",
        root_id) < 100)

    # A cancel that arrives when nothing runs (the reply ended meanwhile) is refused; the
    # refusal is shown and does not take the place of the next request's answer.
    browser.execute_script("window.stelloConsole.state.socket.send({type: 'turn.cancel'})")
    wait(browser, lambda d: "No turn is running" in css(d, "#status").text)
    css(browser, "#fork-label").send_keys("after the refusal")
    css(browser, "#fork-form button").click()
    wait(browser, lambda d: "Forked after the refusal" in css(d, "#status").text)
