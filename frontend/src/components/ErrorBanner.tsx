import { describeError } from "../api/errors";

/** An error in words: what happened, then what the API said. Never a blank page. */
export function ErrorBanner({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  const { title, detail } = describeError(error);
  return (
    <div className="error-banner" role="alert">
      <div>
        <strong>{title}</strong>
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
