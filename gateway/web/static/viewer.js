// The image viewer: next/previous frame by keyboard or the links, without reloading the
// page (the links still work without this script). Frames are PNGs the server renders.
"use strict";
(function () {
  const box = document.getElementById("viewer");
  if (!box) return;
  const count = Number(box.dataset.count);
  let at = Number(box.dataset.at);
  const img = document.getElementById("frame");
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  const position = document.getElementById("position");

  function show(n) {
    at = Math.min(Math.max(n, 1), count);
    img.src = box.dataset.frames + at;
    img.alt = "Frame " + at + " of " + count + " of this series";
    position.textContent = "Frame " + at + " of " + count;
    prev.href = box.dataset.page + "?frame=" + Math.max(at - 1, 1);
    next.href = box.dataset.page + "?frame=" + Math.min(at + 1, count);
    for (const [link, end] of [[prev, at === 1], [next, at === count]]) {
      if (end) link.setAttribute("aria-disabled", "true"); else link.removeAttribute("aria-disabled");
    }
    history.replaceState(null, "", box.dataset.page + "?frame=" + at);
  }
  prev.addEventListener("click", (e) => { e.preventDefault(); show(at - 1); });
  next.addEventListener("click", (e) => { e.preventDefault(); show(at + 1); });
  document.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, textarea, select")) return;
    const moves = {ArrowLeft: at - 1, PageUp: at - 1, ArrowRight: at + 1, PageDown: at + 1,
                   Home: 1, End: count};
    if (e.key in moves) { e.preventDefault(); show(moves[e.key]); }
  });
})();
