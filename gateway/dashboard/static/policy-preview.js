// The policy page's live quote preview: as the partner edits the policy form, ask the
// dashboard what a quote under the edited terms would be (GET .../policy/preview: the
// Bridge's own arithmetic on the server, nothing written) and show it, or the refusal's
// problem code and message. No library; the only host it calls is the gateway.
"use strict";
(function () {
  const form = document.querySelector("form[data-preview]");
  const out = document.getElementById("quote-preview");
  if (!form || !out) return;
  let timer = null;
  let asked = 0;
  async function preview() {
    const mine = ++asked;
    const query = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (name !== "csrf" && name !== "key") query.append(name, String(value));
    }
    let text;
    try {
      const answer = await fetch(form.dataset.preview + "?" + query.toString(), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      const body = await answer.json();
      if (body.ok) {
        text = "You pay " + query.get("amount_in") + ", you get " + body.amount_out +
          " (fee " + body.fee + " BAAS units).";
        out.dataset.state = "ok";
      } else {
        text = "Problem " + body.code + ": " + body.message;
        out.dataset.state = "refused";
      }
    } catch (error) {
      text = "Problem preview_unavailable: " + error;
      out.dataset.state = "refused";
    }
    if (mine === asked) out.textContent = text;  // a slower earlier answer never wins
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(preview, 150);
  });
  preview();
})();
