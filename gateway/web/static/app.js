// Shared by every page. No inline scripts anywhere (the Content-Security-Policy forbids
// them): page scripts are files beside this one.
"use strict";

// The session's form token, for scripts that post (sent as the X-CSRF-Token header).
window.rgw = {
  csrf: () => document.querySelector('meta[name="csrf-token"]').content,
  // GET a JSON endpoint of the pages; a signed-out session goes back to the sign-in page
  async json(url) {
    const r = await fetch(url, {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (r.status === 401) { window.location.assign("/ui/sign-in?why=idle"); return null; }
    if (!r.ok) throw new Error("HTTP " + r.status);
    return r.json();
  },
};
