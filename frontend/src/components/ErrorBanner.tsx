import { describeError } from "../api/errors";

/** An error in words: what happened, then what the API said. Never a blank page.
 *  `context`: what the page was doing, when the title alone would not say ("Drain part1-r0"). */
export function ErrorBanner({ error, onDismiss, context }: { error: unknown; onDismiss?: () => void; context?: string }) {
  const { title, detail } = describeError(error);
  return (
    <div className="error-banner" role="alert">
      <div>
        <strong>{context ? `${context}: ${title}` : title}</strong>
        <p>{detail}</p>
      </div>
      {onDismiss && (
        <button type="button" className="ghost" onClick={onDismiss} aria-label="Dismiss the error">
          ×
        </button>
      )}
    </div>
  );
}
