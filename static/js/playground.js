// The playground (templates/playground/playground.html): one prompt to several models, through
// the gateway, from this browser. The portal mints a short-lived key of the person's own
// (playground:mint_key); it lives in this closure only: never in the page, storage or a URL.
(function () {
  "use strict";

  var form = document.getElementById("playground-form");
  var configElement = document.getElementById("playground-config");
  if (!form || !configElement || !window.fetch || !window.TextDecoder) return;
  var config = JSON.parse(configElement.textContent);

  // A key is minted anew when less than this is left of it: enough for a slow answer.
  var KEY_MARGIN_MS = 60 * 1000;
  // A new key reaches the gateways through the config push, normally within a second; until
  // then they answer 401, which is retried this long after minting.
  var PROPAGATION_MS = 20 * 1000;
  var RETRY_PAUSE_MS = 300;
  var HISTORY_LENGTH = 20;
  var HISTORY_KEY = "gatehouse.playground." + config.org;

  var answers = document.getElementById("playground-answers");
  var paneTemplate = document.getElementById("playground-pane");
  var statusLine = document.getElementById("playground-status");
  var sendButton = document.getElementById("playground-send");
  var stopButton = document.getElementById("playground-stop");
  var historyList = document.getElementById("playground-history");
  var historyEmpty = document.getElementById("playground-history-empty");
  var clearButton = document.getElementById("playground-clear");
  var modelBoxes = Array.prototype.slice.call(form.querySelectorAll('input[name="models"]'));
  var csrfToken = form.querySelector('input[name="csrfmiddlewaretoken"]').value;

  var key = null; // {secret, team, expiresAt, mintedAt}
  var running = null; // the AbortController of the prompt in flight

  form.hidden = false;

  // Inputs ------------------------------------------------------------------------------------

  function chosenModels() {
    return modelBoxes.filter(function (box) { return box.checked; }).map(function (box) { return box.value; });
  }

  function limitModels() {
    var full = chosenModels().length >= config.maxModels;
    modelBoxes.forEach(function (box) { box.disabled = full && !box.checked; });
  }

  function prompt() {
    var temperature = parseFloat(form.elements.temperature.value);
    var maxTokens = parseInt(form.elements.max_tokens.value, 10);
    return {
      system: form.elements.system.value,
      user: form.elements.user.value,
      temperature: isNaN(temperature) ? 1 : temperature,
      maxTokens: isNaN(maxTokens) ? 512 : maxTokens,
    };
  }

  function requestBody(model, given) {
    var messages = [];
    if (given.system.trim()) messages.push({ role: "system", content: given.system });
    messages.push({ role: "user", content: given.user });
    return {
      model: model,
      messages: messages,
      temperature: given.temperature,
      max_tokens: given.maxTokens,
      stream: true,
      stream_options: { include_usage: true },
    };
  }

  // The key -----------------------------------------------------------------------------------

  function firstError(answer) {
    var errors = answer && answer.errors;
    if (!errors) return "";
    for (var field in errors) {
      if (errors[field] && errors[field].length) return errors[field][0];
    }
    return "";
  }

  function playgroundKey() {
    if (key && key.team === config.team && key.expiresAt - Date.now() > KEY_MARGIN_MS) {
      return Promise.resolve(key);
    }
    key = null;
    var body = new URLSearchParams({ team: config.team, csrfmiddlewaretoken: csrfToken });
    return fetch(config.mintUrl, { method: "POST", body: body, credentials: "same-origin" }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (!response.ok) {
          throw new Error(firstError(answer) || "The portal gave no key (HTTP " + response.status + ").");
        }
        key = { secret: answer.key, team: answer.team, expiresAt: Date.parse(answer.expires_at), mintedAt: Date.now() };
        return key;
      });
    });
  }

  // Answer panes ------------------------------------------------------------------------------

  function makePane(model) {
    var pane = paneTemplate.content.firstElementChild.cloneNode(true);
    pane.dataset.model = model;
    pane.querySelector('[data-field="model"]').textContent = model;
    answers.appendChild(pane);
    return pane;
  }

  function field(pane, name) {
    return pane.querySelector('[data-field="' + name + '"]');
  }

  function milliseconds(value) {
    if (value === null || value === undefined) return "—";
    return value < 1000 ? Math.round(value) + " ms" : (value / 1000).toFixed(2) + " s";
  }

  function dollars(value) {
    if (value === null || value === undefined) return "no price set";
    if (value === 0) return "$0";
    return "$" + (value < 0.01 ? value.toPrecision(3) : value.toFixed(4));
  }

  function showResult(pane, result) {
    field(pane, "text").textContent = result.text;
    field(pane, "ttft").textContent = milliseconds(result.ttftMs);
    field(pane, "latency").textContent = milliseconds(result.latencyMs);
    field(pane, "tokens").textContent = result.usage
      ? result.usage.prompt_tokens + " / " + result.usage.completion_tokens
      : "—";
    field(pane, "cost").textContent = result.usage ? dollars(result.costUsd) : "—";
    pane.classList.toggle("failed", Boolean(result.error));
    var status = field(pane, "status");
    status.textContent = result.error ? result.error : "Done.";
    if (result.requestId) {
      status.appendChild(document.createTextNode(" Request "));
      if (config.requestUrl) {
        var link = document.createElement("a");
        link.href = config.requestUrl.replace("REQUEST_ID", encodeURIComponent(result.requestId));
        link.textContent = result.requestId;
        link.className = "mono";
        status.appendChild(link);
      } else {
        var id = document.createElement("span");
        id.textContent = result.requestId;
        id.className = "mono";
        status.appendChild(id);
      }
      status.appendChild(document.createTextNode("."));
    }
    pane.setAttribute("aria-busy", "false");
  }

  // Calling the gateway -----------------------------------------------------------------------

  function sleep(ms, signal) {
    return new Promise(function (resolve) {
      var timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", function () { clearTimeout(timer); resolve(); });
    });
  }

  function cost(usage, deployment) {
    var price = config.prices[deployment];
    if (!usage || !price) return null;
    var input = parseFloat(price[0]);
    var output = parseFloat(price[1]);
    return (usage.prompt_tokens * input + usage.completion_tokens * output) / 1e6;
  }

  async function open(model, given, pane, signal) {
    var body = JSON.stringify(requestBody(model, given));
    for (;;) {
      var started = performance.now();
      var response = await fetch(config.gatewayUrl + "/chat/completions", {
        method: "POST",
        headers: { Authorization: "Bearer " + key.secret, "Content-Type": "application/json" },
        body: body,
        signal: signal,
        credentials: "omit",
      });
      if (response.status !== 401 || Date.now() - key.mintedAt > PROPAGATION_MS || signal.aborted) {
        return { response: response, started: started };
      }
      field(pane, "status").textContent = "Waiting for the gateways to receive the new key…";
      if (response.body) await response.body.cancel();
      await sleep(RETRY_PAUSE_MS, signal);
    }
  }

  async function call(model, given, pane, signal) {
    var result = {
      model: model, text: "", error: "", status: 0, requestId: "", deployment: "",
      ttftMs: null, latencyMs: null, usage: null, costUsd: null,
    };
    var text = field(pane, "text");
    var streamed = document.createTextNode("");
    text.textContent = "";
    text.appendChild(streamed);
    pane.setAttribute("aria-busy", "true");
    field(pane, "status").textContent = "Waiting for the first token…";
    var started = performance.now();
    try {
      var opened = await open(model, given, pane, signal);
      var response = opened.response;
      started = opened.started;
      result.status = response.status;
      result.requestId = response.headers.get("x-request-id") || "";
      result.deployment = response.headers.get("x-gatehouse-deployment") || "";
      if (!response.ok) {
        var failure = await response.json().catch(function () { return null; });
        var message = failure && failure.error && failure.error.message;
        result.error = "HTTP " + response.status + ": " + (message || response.statusText || "refused");
        if (response.status === 401) key = null; // revoked or expired: the next send mints another
      } else {
        field(pane, "status").textContent = "Streaming…";
        await readStream(response, function (chunk) {
          if (chunk.error) {
            result.error = "The stream failed: " + (chunk.error.message || chunk.error.code || "unknown error");
            return;
          }
          var choice = chunk.choices && chunk.choices[0];
          var piece = choice && choice.delta && choice.delta.content;
          if (piece) {
            if (result.ttftMs === null) result.ttftMs = performance.now() - started;
            result.text += piece;
            streamed.appendData(piece);
          }
          if (chunk.usage) result.usage = chunk.usage;
        });
      }
    } catch (error) {
      result.error = signal.aborted
        ? "Stopped."
        : "The gateway at " + config.gatewayUrl + " could not be reached (" + error.message + "). " +
          "Is this portal's origin in the gateway's GATEWAY_CORS_ORIGINS?";
    }
    result.latencyMs = performance.now() - started;
    result.costUsd = cost(result.usage, result.deployment);
    showResult(pane, result);
    return result;
  }

  // Server-sent events: "data: {json}" lines, events separated by a blank line.
  async function readStream(response, onChunk) {
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    function handle(event) {
      var data = event.split(/\r?\n/).filter(function (line) { return line.indexOf("data:") === 0; })
        .map(function (line) { return line.slice(5).trim(); }).join("\n");
      if (!data || data === "[DONE]") return;
      try {
        onChunk(JSON.parse(data));
      } catch (error) {
        // not JSON: skipped, as OpenAI's SDKs skip what they cannot parse
      }
    }
    for (;;) {
      var read = await reader.read();
      if (read.done) break;
      buffer += decoder.decode(read.value, { stream: true });
      var boundary;
      while ((boundary = buffer.search(/\r?\n\r?\n/)) >= 0) {
        handle(buffer.slice(0, boundary));
        buffer = buffer.slice(boundary).replace(/^\r?\n\r?\n/, "");
      }
    }
    if (buffer.trim()) handle(buffer);
  }

  // Sending -----------------------------------------------------------------------------------

  async function send(event) {
    event.preventDefault();
    var models = chosenModels();
    if (!models.length) {
      statusLine.textContent = "Choose at least one model.";
      modelBoxes[0].focus();
      return;
    }
    var given = prompt();
    running = new AbortController();
    var signal = running.signal;
    sendButton.disabled = true;
    stopButton.disabled = false;
    answers.textContent = "";
    var panes = models.map(makePane);
    statusLine.textContent = "Getting a playground key…";
    try {
      await playgroundKey();
    } catch (error) {
      statusLine.textContent = error.message;
      panes.forEach(function (pane) { pane.remove(); });
      finish();
      return;
    }
    statusLine.textContent = "Sent to " + models.length + (models.length === 1 ? " model." : " models.");
    var results = await Promise.all(models.map(function (model, index) {
      return call(model, given, panes[index], signal);
    }));
    statusLine.textContent = signal.aborted ? "Stopped." : "All answers are in.";
    remember({ at: new Date().toISOString(), models: models, prompt: given, results: results });
    finish();
  }

  function finish() {
    running = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
  }

  stopButton.addEventListener("click", function () {
    if (running) running.abort();
  });

  // History of the session (sessionStorage: this tab only, gone when it closes) -----------------

  function history() {
    try {
      return JSON.parse(sessionStorage.getItem(HISTORY_KEY) || "[]");
    } catch (error) {
      return [];
    }
  }

  function remember(entry) {
    var entries = [entry].concat(history()).slice(0, HISTORY_LENGTH);
    try {
      sessionStorage.setItem(HISTORY_KEY, JSON.stringify(entries));
    } catch (error) {
      // storage full or refused: the history is a convenience
    }
    showHistory();
  }

  function showHistory() {
    var entries = history();
    historyList.textContent = "";
    historyEmpty.hidden = entries.length > 0;
    clearButton.hidden = entries.length === 0;
    entries.forEach(function (entry, index) {
      var item = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "btn-link";
      var time = new Date(entry.at).toLocaleTimeString();
      var words = entry.prompt.user.length > 80 ? entry.prompt.user.slice(0, 80) + "…" : entry.prompt.user;
      button.textContent = time + " · " + entry.models.join(", ") + " · " + words;
      button.addEventListener("click", function () { restore(history()[index]); });
      item.appendChild(button);
      historyList.appendChild(item);
    });
  }

  function restore(entry) {
    if (!entry) return;
    form.elements.system.value = entry.prompt.system;
    form.elements.user.value = entry.prompt.user;
    form.elements.temperature.value = entry.prompt.temperature;
    form.elements.max_tokens.value = entry.prompt.maxTokens;
    modelBoxes.forEach(function (box) { box.checked = entry.models.indexOf(box.value) >= 0; });
    limitModels();
    answers.textContent = "";
    entry.results.forEach(function (result) { showResult(makePane(result.model), result); });
    statusLine.textContent = "Shown from this session's history; send to ask again.";
    updateCode();
  }

  clearButton.addEventListener("click", function () {
    sessionStorage.removeItem(HISTORY_KEY);
    showHistory();
  });

  // Show code: the same call as curl, Python (openai SDK) and JavaScript (fetch) ---------------

  function indent(text, spaces) {
    return text.split("\n").join("\n" + " ".repeat(spaces));
  }

  function shellQuote(text) {
    return "'" + text.replace(/'/g, "'\\''") + "'";
  }

  function pythonLiteral(value) {
    // JSON is a Python literal but for true/false/null, which these values never hold.
    return JSON.stringify(value, null, 4);
  }

  function updateCode() {
    var models = chosenModels();
    var model = models[0] || (modelBoxes[0] && modelBoxes[0].value) || "gpt-4o";
    var body = requestBody(model, prompt());
    var others = models.slice(1);
    document.getElementById("code-note").textContent = others.length
      ? "It asks " + model + "; set model to " + others.join(" or ") + " for the other columns."
      : "";
    document.getElementById("code-curl").textContent = [
      "curl -N " + config.gatewayUrl + "/chat/completions \\",
      '  -H "Authorization: Bearer $GATEHOUSE_API_KEY" \\',
      '  -H "Content-Type: application/json" \\',
      "  -d " + shellQuote(JSON.stringify(body, null, 2)),
    ].join("\n");
    document.getElementById("code-python").textContent = [
      "import os",
      "",
      "from openai import OpenAI",
      "",
      "client = OpenAI(",
      '    base_url="' + config.gatewayUrl + '",',
      '    api_key=os.environ["GATEHOUSE_API_KEY"],',
      ")",
      "stream = client.chat.completions.create(",
      "    model=" + JSON.stringify(body.model) + ",",
      "    messages=" + indent(pythonLiteral(body.messages), 4) + ",",
      "    temperature=" + body.temperature + ",",
      "    max_tokens=" + body.max_tokens + ",",
      "    stream=True,",
      '    stream_options={"include_usage": True},',
      ")",
      "for chunk in stream:",
      "    if chunk.choices and chunk.choices[0].delta.content:",
      '        print(chunk.choices[0].delta.content, end="", flush=True)',
      "    if chunk.usage:",
      "        print()",
      "        print(chunk.usage)",
    ].join("\n");
    document.getElementById("code-javascript").textContent = [
      'const response = await fetch("' + config.gatewayUrl + '/chat/completions", {',
      '  method: "POST",',
      "  headers: {",
      "    Authorization: `Bearer ${process.env.GATEHOUSE_API_KEY}`,",
      '    "Content-Type": "application/json",',
      "  },",
      "  body: JSON.stringify(" + indent(JSON.stringify(body, null, 2), 2) + "),",
      "});",
      "if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);",
      "const decoder = new TextDecoder();",
      'let buffer = "";',
      "for await (const bytes of response.body) {",
      "  buffer += decoder.decode(bytes, { stream: true });",
      '  const events = buffer.split("\\n\\n");',
      "  buffer = events.pop();",
      "  for (const event of events) {",
      '    const data = event.replace(/^data: /, "");',
      '    if (data === "[DONE]") continue;',
      "    const chunk = JSON.parse(data);",
      "    const piece = chunk.choices[0]?.delta?.content;",
      "    if (piece) process.stdout.write(piece);",
      "    if (chunk.usage) console.log(\"\\n\", chunk.usage);",
      "  }",
      "}",
    ].join("\n");
  }

  // Wiring ------------------------------------------------------------------------------------

  form.addEventListener("submit", send);
  form.addEventListener("input", updateCode);
  form.addEventListener("change", function (event) {
    if (event.target.name === "models") limitModels();
    updateCode();
  });
  limitModels();
  updateCode();
  showHistory();
})();
