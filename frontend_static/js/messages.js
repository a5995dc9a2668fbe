// Turn an ApiError into words a person can act on.

// The API's body limit: API Gateway base64-encodes binary bodies into Lambda's 6 MB event, so
// (6,291,456 - 64 KiB of event headroom) x 3/4 (artlens.api.events.MAX_BODY_BYTES).
export const MAX_UPLOAD_BYTES = 4_669_440;

const FILE_PROBLEM_TITLES = {
  400: "The image could not be read.",
  413: "The image is too large.",
  415: "This file type is not supported.",
};

/**
 * @param {import("./api.js").ApiError} error
 * @returns {{title: string, detail: string, tokenProblem: boolean}}
 */
export function describeApiError(error) {
  if (error.kind === "timeout") {
    return {
      title: "The ArtLens API is taking too long to answer.",
      detail: `${error.message} It may be starting up — please try again in a moment.`,
      tokenProblem: false,
      retry: true,
    };
  }
  if (error.kind === "network") {
    // Name the service: "check your internet connection" sends people after the wrong thing
    // when it is the API that is stopped or unreachable.
    return {
      title: error.message,
      detail: "It may be stopped or unreachable from this network. Retry when it is back.",
      tokenProblem: false,
      retry: true,
    };
  }
  if (error.kind === "bad_response") {
    return { title: "Unexpected answer from the service.", detail: error.message, tokenProblem: false };
  }
  const status = error.status;
  if (status === 401) {
    return {
      title: "Your access token is missing, expired or not valid.",
      detail: "Paste a valid token in the Access token field above, then try again.",
      tokenProblem: true,
    };
  }
  if (status === 403) {
    return {
      title: "Access denied.",
      detail: "Your token is not allowed to use this service. Ask for a new token.",
      tokenProblem: true,
    };
  }
  if (status in FILE_PROBLEM_TITLES) {
    return { title: FILE_PROBLEM_TITLES[status], detail: error.message, tokenProblem: false };
  }
  if (status === 429) {
    return {
      title: "Too many requests.",
      detail: "Please wait a few seconds and try again.",
      tokenProblem: false,
    };
  }
  if (status === 503) {
    return {
      title: "The service is temporarily unavailable.",
      detail: `${error.message} Please try again in a moment.`,
      tokenProblem: false,
      retry: true,
    };
  }
  return {
    title: `Something went wrong (HTTP ${status}).`,
    detail: error.message,
    tokenProblem: false,
    retry: status >= 500,
  };
}

export function missingTokenProblem() {
  return {
    title: "An access token is needed.",
    detail: "Paste your token in the Access token field above, then try again.",
    tokenProblem: true,
  };
}

/** Show {title, detail} in an alert box (role="alert" is set in the HTML). */
export function showProblem(box, problem) {
  box.replaceChildren();
  const title = document.createElement("strong");
  title.className = "message-title";
  title.textContent = problem.title;
  box.append(title);
  if (problem.detail) {
    const detail = document.createElement("span");
    detail.className = "message-detail";
    detail.textContent = ` ${problem.detail}`;
    box.append(detail);
  }
  box.hidden = false;
}

export function clearProblem(box) {
  box.hidden = true;
  box.replaceChildren();
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export function formatPercent(p, digits = 1) {
  return `${(p * 100).toFixed(digits)}%`;
}
