// Import result page: when the polled progress bar reports the job finished, reload to show counts and errors.
document.addEventListener("htmx:afterSettle", function () {
  var bar = document.querySelector("[data-import-running] .job-progress");
  if (bar && (bar.dataset.state === "done" || bar.dataset.state === "failed")) {
    window.location.reload();
  }
});
