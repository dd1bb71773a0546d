// Campaign form: show only the schedule and audience fields that apply to the chosen kind.
(function () {
  "use strict";
  var form = document.getElementById("campaign-form");
  if (!form) { return; }
  function update() {
    var checked = form.querySelector("[name=kind]:checked") || form.querySelector("select[name=kind]");
    var kind = checked ? checked.value : "";
    form.querySelectorAll("[data-campaign-kinds]").forEach(function (section) {
      var kinds = section.getAttribute("data-campaign-kinds").split(" ");
      section.hidden = kind !== "" && kinds.indexOf(kind) === -1;
    });
  }
  form.addEventListener("change", function (event) {
    if (event.target.name === "kind") { update(); }
  });
  update();
}());
