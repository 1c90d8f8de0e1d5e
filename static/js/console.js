// Confirmation before destructive actions: any form with data-confirm asks first. A form with
// data-confirm-unchecking="<checkbox name>" asks data-confirm-unchecking-message only when that box is ticked in
// what is stored and is not now (a user edit that disables the account). What is stored is
// data-confirm-unchecking-stored ("on" or "off"), else the box as the page loaded: a form refused for another
// field comes back with the box as it was sent, unticked, and its next send would have asked nothing.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var message = form.getAttribute("data-confirm");
  var boxName = form.getAttribute("data-confirm-unchecking");
  var box = boxName ? form.querySelector('input[type=checkbox][name="' + boxName + '"]') : null;
  var stored = form.getAttribute("data-confirm-unchecking-stored");
  var ticked = stored ? stored === "on" : Boolean(box && box.defaultChecked);
  if (!message && box && ticked && !box.checked) {
    message = form.getAttribute("data-confirm-unchecking-message");
  }
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// A form sent back with an error shows it: the first field in error is scrolled into view and focused,
// so a refusal far down the page (a CSR under the certificate's PEM) is not missed.
document.addEventListener("DOMContentLoaded", function () {
  var field = document.querySelector(".has-error");  // a form's .field, or a one-line form's label or form
  if (!field) return;
  field.scrollIntoView({block: "center"});
  var input = field.querySelector("textarea, input:not([type=hidden]), select");
  if (input) input.focus({preventScroll: true});
});

// A file input with data-max-bytes refuses a larger file at once, in the reader's language (data-too-large),
// and keeps its form from being sent (the forms are novalidate, so the browser would not stop it): the
// server would answer 413 and everything else typed into the form would be lost. The refusal is announced
// (role=alert) and tied to the input, as the server's own field errors are.
function fileTooLarge(input) {
  var file = input.files && input.files[0];
  return Boolean(file && file.size > parseInt(input.getAttribute("data-max-bytes"), 10));
}

function showFileLimit(input) {
  var field = input.closest(".field") || input.parentNode;
  var note = field.querySelector(".error.file-limit");
  if (fileTooLarge(input)) {
    if (!note) {
      note = document.createElement("div");
      note.className = "error file-limit";
      note.id = (input.id || input.name) + "-file-limit";
      note.setAttribute("role", "alert");
      field.appendChild(note);
    }
    note.textContent = input.getAttribute("data-too-large") || "Too large";
    field.classList.add("has-error");
    input.setAttribute("aria-invalid", "true");
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (described.indexOf(note.id) < 0) described.push(note.id);
    input.setAttribute("aria-describedby", described.join(" "));
  } else if (note) {
    var rest = (input.getAttribute("aria-describedby") || "").split(" ").filter(function (id) { return id && id !== note.id; });
    if (rest.length) input.setAttribute("aria-describedby", rest.join(" "));
    else input.removeAttribute("aria-describedby");
    input.removeAttribute("aria-invalid");
    note.remove();
    field.classList.remove("has-error");
  }
}

document.addEventListener("change", function (event) {
  if (event.target.matches && event.target.matches("input[type=file][data-max-bytes]")) showFileLimit(event.target);
});

document.addEventListener("submit", function (event) {
  var inputs = event.target.querySelectorAll("input[type=file][data-max-bytes]");
  for (var i = 0; i < inputs.length; i++) {
    if (fileTooLarge(inputs[i])) {
      event.preventDefault();
      showFileLimit(inputs[i]);
      inputs[i].scrollIntoView({block: "center"});
      return;
    }
  }
});

// A field with maxlength cuts a longer pasted text at its limit without a word (the browser's own behaviour), so a
// reason pasted from a letter would be sent cut short and nobody would know. The field says so (role=alert), in
// the reader's language (body's data-paste-cut); the note goes once the text is shorter than the limit again.
document.addEventListener("paste", function (event) {
  var field = event.target;
  if (!field.matches || !field.matches("input[maxlength], textarea[maxlength]")) return;
  var limit = parseInt(field.getAttribute("maxlength"), 10);
  var pasted = (event.clipboardData ? event.clipboardData.getData("text") : "").replace(/\r\n?/g, "\n");
  if (field.tagName !== "TEXTAREA") pasted = pasted.replace(/\n/g, "");  // a one-line input drops line breaks
  var replaced = (field.selectionEnd || 0) - (field.selectionStart || 0);
  if (field.value.length - replaced + pasted.length <= limit) return;
  var note = field.nextElementSibling;
  if (!note || !note.classList.contains("paste-cut")) {
    note = document.createElement("span");
    note.className = "error paste-cut";
    note.id = (field.id || field.name) + "-paste-cut-" + Math.random().toString(36).slice(2, 8);
    note.setAttribute("role", "alert");
    field.insertAdjacentElement("afterend", note);
    field.setAttribute("aria-describedby", ((field.getAttribute("aria-describedby") || "") + " " + note.id).trim());
  }
  note.textContent = (document.body.getAttribute("data-paste-cut") || "Pasted text cut to {n} characters.")
    .replace("{n}", String(limit));
});

document.addEventListener("input", function (event) {
  var field = event.target, note = field.nextElementSibling;
  if (note && note.classList && note.classList.contains("paste-cut")
      && field.value.length < parseInt(field.getAttribute("maxlength"), 10)) {
    var rest = (field.getAttribute("aria-describedby") || "").split(" ").filter(function (id) { return id && id !== note.id; });
    if (rest.length) field.setAttribute("aria-describedby", rest.join(" "));
    else field.removeAttribute("aria-describedby");
    note.remove();
  }
});

// The session clock (app/auth/idle.py): shortly before the idle limit, a warning with a button that counts as
// activity; at the end, a link to sign in again in another tab, so what was typed on this page can still be sent
// (the form's CSRF token stays valid for the same browser). Asking the server how long is left does not count
// as activity, so a page left open in another tab cannot keep the session alive.
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("session-clock");
  if (!box || !window.fetch) return;
  var warnSeconds = parseInt(box.getAttribute("data-warn-seconds"), 10);
  var TYPING_MS = 5000;  // keys this recent: someone is typing
  var stay = box.querySelector(".session-stay");
  var timer = null, shown = null, returnTo = null, typedAt = 0, staying = false;

  function editable(element) {
    return !!element && (element.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(element.tagName));
  }

  // The warning takes the focus to its Stay button (it was some 20 Tabs away) and gives it back where the reader
  // was once they stay; while it is shown the page scrolls a focused field clear of it, not under it (WCAG 2.4.11).
  // From a field it does not: someone pausing while typing lost their next keys to the button, and a space
  // pressed it. There, a key typed counts as the button does (below), and the alert is read out all the same.
  function show(which) {
    var hadFocus = box.contains(document.activeElement);  // read before hiding it moves the focus away
    box.hidden = which === null;
    ["soon", "final", "ended"].forEach(function (name) {
      box.querySelector(".session-" + name).hidden = name !== which;
    });
    document.documentElement.style.scrollPaddingBottom = which === null ? "" : (box.offsetHeight + 16) + "px";
    if (which === "soon" && shown !== "soon") {
      var active = document.activeElement;
      returnTo = active && active !== document.body && !box.contains(active) ? active : null;
      if (!editable(active)) stay.focus();  // from a field, Stay clicked still gives the focus back to it
    } else if (which !== "soon" && shown === "soon" && hadFocus) {
      giveBack();  // stayed, or the Stay button is gone: back where the reader was, not the page's start
    }
    shown = which;
  }

  function giveBack() {
    if (returnTo && document.contains(returnTo)) returnTo.focus();
    returnTo = null;
  }

  function schedule(state) {
    clearTimeout(timer);
    var left = state.seconds_left;
    if (left <= 0) {
      show("ended");
    } else if (left > warnSeconds) {
      show(null);
      timer = setTimeout(check, (left - warnSeconds) * 1000);
    } else if (state.renewable && Date.now() - typedAt < TYPING_MS) {
      keepAlive();  // someone typing is not idle: taking the focus to the Stay button sent their keys there
    } else {
      show(state.renewable ? "soon" : "final");
      timer = setTimeout(check, (left + 1) * 1000);
    }
  }

  // A signed-out session answers 401, or a redirect to the sign-in page: either way, ended.
  function read(response) {
    var json = (response.headers.get("Content-Type") || "").indexOf("application/json") === 0;
    return response.ok && json && !response.redirected ? response.json() : {seconds_left: 0};
  }

  function check() {
    fetch(box.getAttribute("data-status-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(read).then(schedule, function () { timer = setTimeout(check, 30000); });
  }

  function keepAlive() {
    if (staying) return;
    staying = true;
    fetch(box.getAttribute("data-keepalive-url"), {
      method: "POST", credentials: "same-origin",
      headers: {"Accept": "application/json", "X-CSRFToken": box.getAttribute("data-csrf")}
    }).then(read).then(schedule, function () { timer = setTimeout(check, 30000); })
      .finally(function () { staying = false; });
  }

  stay.addEventListener("click", keepAlive);

  // Keys typed into a field of this page (by a person: a page left open in another tab gets none) count as
  // activity while the warning shows, as the Stay button does, and just before it, in place of it.
  document.addEventListener("keydown", function (event) {
    if (!event.isTrusted || !editable(event.target)) return;
    typedAt = Date.now();
    if (shown === "soon") keepAlive();
  }, true);

  schedule({seconds_left: parseInt(box.getAttribute("data-seconds-left"), 10),
            renewable: box.getAttribute("data-renewable") === "true"});
});

// A page that shows a secret once (data-shown-once: a new enrollment token, in the answer to the form's POST)
// turns its history entry into a plain GET of the same address, so a reload, or Back and Forward, read the
// page again without the secret instead of sending the form, and issuing a token, a second time.
if (document.querySelector("[data-shown-once]")) {
  window.history.replaceState(null, "", window.location.href);
}

// A POST form is sent once. A second click or Enter while the answer is on its way sent it again: two tokens
// issued, only the second shown, the first left active; a second application refused as a copy of the first. Its
// submit buttons say so (aria-disabled; a disabled button would drop its own name and value from the form) and keep
// their label, until the answer replaces the page. A form answered with a file (data-download) leaves the page in
// place: it is free again after a moment, long enough to absorb a double click. A page brought back by Back from
// the back-forward cache is free again too. A repeat is stopped before the confirmation asks (capture, on window);
// a form is marked after every other listener (bubbling, on window), so a confirmation declined marks nothing.
window.addEventListener("submit", function (event) {
  if (event.target.hasAttribute("data-sent")) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);

function markSent(form, sent) {
  form.toggleAttribute("data-sent", sent);
  Array.prototype.forEach.call(form.elements, function (element) {
    if (element.type !== "submit") return;
    if (sent) element.setAttribute("aria-disabled", "true");
    else element.removeAttribute("aria-disabled");
  });
}

window.addEventListener("submit", function (event) {
  var form = event.target, submitter = event.submitter;
  var method = (submitter && submitter.hasAttribute("formmethod") ? submitter.formMethod : form.method);
  if (event.defaultPrevented || method !== "post") return;
  markSent(form, true);
  if (form.hasAttribute("data-download")) setTimeout(function () { markSent(form, false); }, 1000);
});

window.addEventListener("pageshow", function (event) {
  if (event.persisted) document.querySelectorAll("form[data-sent]").forEach(function (form) { markSent(form, false); });
});
