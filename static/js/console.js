// Confirmation before destructive actions: any form with data-confirm asks first.
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) {
    event.preventDefault();
  }
});

// A form sent back with an error shows it: the first field in error is scrolled into view and focused,
// so a refusal far down the page (a CSR under the certificate's PEM) is not missed.
document.addEventListener("DOMContentLoaded", function () {
  var field = document.querySelector(".field.has-error");
  if (!field) return;
  field.scrollIntoView({block: "center"});
  var input = field.querySelector("textarea, input:not([type=hidden]), select");
  if (input) input.focus({preventScroll: true});
});

// A file input with data-max-bytes refuses a larger file at once, in the reader's language (data-too-large),
// and keeps its form from being sent (the forms are novalidate, so the browser would not stop it): the
// server would answer 413 and everything else typed into the form would be lost.
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
      field.appendChild(note);
    }
    note.textContent = input.getAttribute("data-too-large") || "Too large";
    field.classList.add("has-error");
  } else if (note) {
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
