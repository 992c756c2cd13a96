// The sign-in page: checks the token with POST /ui/login, which sets the
// page's HttpOnly session cookie; the token itself stays in sessionStorage
// for the API calls (Authorization: Bearer), so it is gone with the tab.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login-form");
  const err = document.getElementById("login-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const tok = document.getElementById("token").value.trim();
    err.textContent = "";
    try {
      const r = await fetch("/ui/login", {method: "POST", headers: {"Authorization": "Bearer " + tok}});
      if (!r.ok) {
        let msg = r.status + " " + r.statusText;
        try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
        err.textContent = msg;
        return;
      }
      sessionStorage.setItem("procfleet_token", tok);
      location.replace("/");
    } catch (x) {
      err.textContent = "cannot reach the dispatcher: " + x;
    }
  });
});
