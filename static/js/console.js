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
